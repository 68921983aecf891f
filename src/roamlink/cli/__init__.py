"""The ``roamlink`` command-line tool."""
