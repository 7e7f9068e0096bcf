# NixOS module for a Flynn host. The services come from the package's own unit files
# (systemd.packages = [ cfg.package ]: the files of units/); this module only enables them and
# passes settings through the environment the units already read.
{
  config,
  lib,
  ...
}:
let
  inherit (lib)
    mkEnableOption
    mkIf
    mkOption
    optionalAttrs
    types
    ;
  cfg = config.services.flynn;
in
{
  options.services.flynn = {
    enable = mkEnableOption "a Flynn host (the flynn-host daemon and the platform services)";

    package = mkOption {
      type = types.package;
      description = "The flynn package providing the daemons and the unit files of units/.";
    };

    hostId = mkOption {
      type = types.nullOr (types.strMatching "[A-Za-z0-9]{1,63}");
      default = null;
      example = "host1";
      description = "Host id (letters and digits); by default the hostname without punctuation.";
    };

    listenAddress = mkOption {
      type = types.str;
      default = "0.0.0.0";
      description = "Address the host API binds to.";
    };

    port = mkOption {
      type = types.port;
      default = 1113;
      description = "Port of the host API.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the host API port to the other hosts of the cluster.";
    };
  };

  config = mkIf cfg.enable {
    systemd.packages = [ cfg.package ];
    environment.systemPackages = [ cfg.package ];

    # systemd.packages does not process [Install] sections: enable the units here.
    # Build directories a power cut left behind go at boot, before flynn-host starts jobs.
    systemd.services.flynn-build-cleanup.wantedBy = [ "multi-user.target" ];
    systemd.services.flynn-host = {
      wantedBy = [ "multi-user.target" ];
      environment =
        {
          FLYNN_HOST_LISTEN_IP = cfg.listenAddress;
          FLYNN_HOST_PORT = toString cfg.port;
        }
        // optionalAttrs (cfg.hostId != null) {
          FLYNN_HOST_ID = cfg.hostId;
        };
    };

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ cfg.port ];

    # journald keeps every job's output (docs/logs.md): the budget of the appliance image's
    # /etc/systemd/journald.conf.d/50-flynn.conf
    services.journald = {
      storage = "persistent";
      rateLimitInterval = "10s";
      rateLimitBurst = 500000;
      extraConfig = ''
        SystemMaxUse=1G
        SystemKeepFree=1G
        SystemMaxFileSize=128M
      '';
    };
  };
}
