"""The one generation engine: Recipe in, pictures out. No web, no queue, no CLI in here."""
