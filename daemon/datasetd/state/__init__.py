"""What datasetd knows and keeps: `observe` reads disk + journal (never writes), `journal` (SQLite),
`durable` (the one atomic writer), `lock` (one datasetd per root), `status` (status.json), `fswalk`.

Sits between the pure core and the edges: the engine and the verbs read and record through it.
"""
