"""`datasetd run`: the daemon loop (`daemon`), its jobs and triggers, metrics, sd_notify (`systemd`).

Top of the stack below the CLI: it drives the engine on manifest edits, timers and signals.
"""
