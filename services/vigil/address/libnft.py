"""libnftables, in process: one fence renewal is a library call (well under a millisecond), not
an ``nft`` process (about 16 ms here, twice on a switchover's critical path).

A thin ctypes binding to the five functions we need; Debian's ``python3-nftables`` is the same
thing, but lives outside our virtualenv. Returns None when the library is not installed, and the
fence then runs the ``nft`` command instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util


class LibNft:
    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)  # keep nft's output off our stdout
        lib.nft_ctx_buffer_error(self._ctx)

    def run(self, script: str) -> str | None:
        """Run ``script`` as one transaction; None on success, else nft's error text."""
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
        error = self._lib.nft_ctx_get_error_buffer(self._ctx)
        if rc == 0:
            return None
        return (error or b"").decode(errors="replace").strip() or f"nft returned {rc}"

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


def load() -> LibNft | None:
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        return LibNft(ctypes.CDLL(name))
    except (OSError, AttributeError):
        return None
