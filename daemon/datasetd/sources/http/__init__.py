"""The `http` source: resumable, segmented, verified downloads with mirrors.

`fetcher` is the `Source`; `stream`/`part`/`attempt` move bytes; `util` holds headers and errors.
"""

from datasetd.logs import without_extras

with without_extras("click"):  # httpx's CLI extra (click, rich, pygments) is never used here
    from datasetd.sources.http.fetcher import HttpFetcher, fetch_url_to, make_source

__all__ = ["HttpFetcher", "fetch_url_to", "make_source"]
