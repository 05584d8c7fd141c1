"""The `http` source: resumable, segmented, verified downloads with mirrors.

`fetcher` is the `Source`; `stream`/`part`/`attempt` move bytes; `util` holds headers and errors.
"""

from datasetd.sources.http.fetcher import HttpFetcher, fetch_url_to, make_source

__all__ = ["HttpFetcher", "fetch_url_to", "make_source"]
