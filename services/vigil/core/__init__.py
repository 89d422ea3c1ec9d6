"""The shared core every service uses: subjects, bus connection, config loading, runner."""
