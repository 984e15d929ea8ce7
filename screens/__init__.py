"""Textual screens for dbops (installed as dbops.screens). Everything here reads immutable
health values from the core; nothing here talks to a server."""
