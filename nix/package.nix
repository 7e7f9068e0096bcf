# The flynn Python package with the systemd units of units/ installed under lib/systemd/system.
# Unit files name /opt/flynn/venv/bin/... (the Debian/appliance install prefix); here that prefix is
# rewritten to this package's bin/, the only difference between the two installs.
{
  lib,
  python3Packages,
  src,
}:
let
  pyproject = lib.importTOML (src + "/pyproject.toml");
in
python3Packages.buildPythonApplication {
  pname = pyproject.project.name;
  inherit (pyproject.project) version;
  pyproject = true;
  inherit src;

  # Without mypy here setup.py compiles nothing: the router's data plane runs interpreted (the
  # same modules; docs/router.md, "Compiled data plane"). Adding python3Packages.mypy compiles
  # it, as the Debian image does; not done while no Nix build can be tested on our machines.
  build-system = [
    python3Packages.setuptools
    python3Packages.wheel
  ];

  dependencies = builtins.attrValues {
    inherit (python3Packages)
      aiohttp
      click
      cryptography
      dnslib
      httptools
      psycopg
      psycopg-pool
      pysyncobj
      tomli-w
      uvloop
      pystemd
      systemd # systemd-python: journal and sd_notify
      ;
  };

  postInstall = ''
    install -Dm644 -t $out/lib/systemd/system units/*
    for unit in $out/lib/systemd/system/*.service; do
      substituteInPlace "$unit" --replace-fail /opt/flynn/venv/bin/ $out/bin/
    done
  '';

  pythonImportsCheck = [
    "flynn"
    "flynn.host.daemon"
  ];

  meta = {
    description = pyproject.project.description;
    license = lib.licenses.bsd3;
    platforms = lib.platforms.linux;
    mainProgram = "flynn";
  };
}
