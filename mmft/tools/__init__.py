"""Library code behind the ``mmft`` tool subcommands (``mmft sample-data | compare | extract-features | export``)."""
