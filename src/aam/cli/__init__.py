"""The `aam` command line. One module per command; nothing else imports this package."""
