"""Worker-process code: strict tar reading (`tarsafe`), the index pass and extraction (`unpack`),
read-back verification (`verify`) and whole-file digests against pins (`digest`).

Plain arguments in, plain data out, so every function can cross a process boundary.
"""
