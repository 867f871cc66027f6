"""The template's server machinery. You need not open this package: see server/README.md."""
