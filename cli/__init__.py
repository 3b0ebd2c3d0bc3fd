"""The kisstore command line (click). Each command parses options, calls the library, reports."""
