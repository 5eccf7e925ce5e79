"""The ``moderation`` console command (``moderation_cli.main``)."""
