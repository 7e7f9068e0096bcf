"""gitreceive: ``git push`` deploys over git's smart HTTP protocol (docs/gitreceive.md).

One module per concern: ``config`` (settings), ``auth`` (Basic auth checked against the
controller, cached), ``repos`` (the repository cache and its blobstore tarball), ``backend`` (the
real ``git http-backend`` CGI, streamed), ``api`` (routes), ``cluster`` (discoverd lookups),
``blobs`` (a streaming blobstore client), and for the hooks: ``refs`` (the branch rule),
``buildjob`` (the build job and its live output), ``slug`` (the FLYNN-SLUG line), ``release``,
``deploy``, ``output`` (what git shows as ``remote:`` lines), ``prereceive`` (the sequence),
``hook`` (the hook command) and ``daemon`` (the service and entry point).
"""
