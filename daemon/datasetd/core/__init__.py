"""The pure core: observed state and actions (`model`), `plan(manifest, observed) -> [Action]`
(`planning`), and the figures derived from them (`summary`).

No I/O: imports only `config` and `errors`; most of the tests live here.
"""
