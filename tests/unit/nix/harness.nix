# Evaluates nix/module.nix and nix/package.nix against a small stand-in for nixpkgs' lib, so the
# module's logic is checked on machines without nixpkgs (none is reachable here). It checks what
# the files compute, not that NixOS builds or boots them.
{
  enable ? true,
  hostId ? null,
  openFirewall ? false,
}:
let
  repo = ../../..;
  lib = {
    mkEnableOption = description: {
      _type = "option";
      default = false;
      inherit description;
    };
    mkOption = attrs: attrs // { _type = "option"; };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    optionalAttrs = cond: attrs: if cond then attrs else { };
    types = {
      package = "package";
      bool = "bool";
      str = "str";
      port = "port";
      nullOr = t: "nullOr ${t}";
      strMatching = re: "strMatching ${re}";
    };
    importTOML = path: builtins.fromTOML (builtins.readFile path);
    licenses.bsd3 = "bsd3";
    platforms.linux = [ "x86_64-linux" ];
  };
  config.services.flynn = {
    inherit enable hostId openFirewall;
    package = "PKG";
    listenAddress = "0.0.0.0";
    port = 1113;
  };
  module = import (repo + "/nix/module.nix") { inherit config lib; };
  resolve =
    x:
    if builtins.isAttrs x && (x._type or null) == "if" then
      (if x.condition then resolve x.content else null)
    else if builtins.isAttrs x then
      builtins.mapAttrs (_: resolve) x
    else
      x;
  fakePython = {
    buildPythonApplication = attrs: attrs;
    setuptools = "setuptools";
    wheel = "wheel";
    aiohttp = "aiohttp";
    click = "click";
    cryptography = "cryptography";
    dnslib = "dnslib";
    h2 = "h2";
    httptools = "httptools";
    psycopg = "psycopg";
    psycopg-pool = "psycopg-pool";
    pysyncobj = "pysyncobj";
    tomli-w = "tomli-w";
    uvloop = "uvloop";
    pystemd = "pystemd";
    systemd = "systemd";
  };
  package = import (repo + "/nix/package.nix") {
    inherit lib;
    src = repo;
    python3Packages = fakePython;
  };
in
{
  optionNames = builtins.attrNames module.options.services.flynn;
  config = resolve module.config;
  package = {
    inherit (package)
      pname
      version
      postInstall
      dependencies
      pythonImportsCheck
      ;
  };
}
