"""Configuration: TOML manifest → typed, frozen `Manifest`; every error names its key path.

First in the flow: everything else reads a `Manifest`, nothing here reads the disk
beyond the manifest file itself. Imports only `errors`.
"""
