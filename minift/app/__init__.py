"""The application: the `minift` command, `compare` and its report, run folders."""
