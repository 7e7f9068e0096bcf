"""blobstore: files over HTTP (GET/PUT/DELETE of paths, streamed), stored in a backend.

See docs/blobstore.md. Modules: :mod:`.config` (settings from the environment), :mod:`.paths`
(which paths are valid), :mod:`.backends` (the storage abstraction and its PostgreSQL
implementation), :mod:`.api` (the aiohttp application), :mod:`.daemon` (``flynn-blobstore``).
"""
