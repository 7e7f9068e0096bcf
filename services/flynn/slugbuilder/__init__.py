"""flynn-slugbuilder: turns an app's source into a slug with Heroku's buildpack API.

It runs inside a build job (``app_mode: build``: ``/app`` is an empty directory the job may write),
started by gitreceive for each ``git push``. The contract is docs/gitreceive.md ("slugbuilder"):
fetch the source (and the app's build cache), apply ``.slugignore``, select buildpacks
(``BUILDPACK_URL``, ``.buildpacks``, else the first built-in that detects), run ``bin/detect``,
``bin/compile BUILD CACHE ENV`` and ``bin/release``, merge the Procfile, PUT the slug and the
cache, and end with ``FLYNN-SLUG {...}``.

One module per concern: ``errors``, ``output`` (the build log), ``process`` (children, cancel),
``transfer`` (HTTP GET/PUT, streamed), ``archive`` (extract, slug/cache tarballs), ``slugignore``,
``procfile``, ``release`` (bin/release YAML), ``envdir``, ``ssh`` (SSH_CLIENT_KEY), ``buildpack``
(naming, fetching, running), ``build`` (the sequence) and ``main`` (the command).
"""
