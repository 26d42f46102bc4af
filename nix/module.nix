# NixOS module: services.sift.masters.<name> and services.sift.peers.<name>, one systemd unit each
# (sift-master-<name>, sift-peer-<name>). Options: docs/install.md; the units: docs/operations.md.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types;
  cfg = config.services.sift;
  toml = pkgs.formats.toml { };

  # Keys the module sets itself; `settings` may not set them.
  reservedKeys = [ "psk" "psk_file" "state_dir" "control_socket" "control_group" ];

  # The options both roles have. `role` is "master" or "peer".
  instanceOptions = role: defaultPort: { config, ... }: {
    options = {
      enable = lib.mkEnableOption "this sift ${role}";

      bind_addr = mkOption {
        type = types.str;
        default = "0.0.0.0:${toString defaultPort}";
        description = "TCP address (HOST:PORT) to listen on.";
      };

      pskFile = mkOption {
        # A string, not a path: a path would be copied into the world-readable Nix store.
        type = types.str;
        example = "/run/agenix/sift-psk";
        description = ''
          File holding the pre-shared key on the target machine (for example an agenix or
          sops-nix secret). systemd reads it at start and hands it to sift as the credential
          `psk`; it never enters the Nix store or the service's environment.
        '';
      };

      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open the TCP port of `bind_addr` in the firewall.";
      };

      user = mkOption {
        type = types.str;
        default = "sift";
        description = "User the daemon runs as. The module creates `sift` if it is used.";
      };

      group = mkOption {
        type = types.str;
        default = "sift";
        description = "Group the daemon runs as. The module creates `sift` if it is used.";
      };

      controlGroup = mkOption {
        type = types.nullOr types.str;
        default = config.group;
        defaultText = lib.literalExpression "group";
        example = "wheel";
        description = ''
          Members of this group may use the control socket
          /run/sift-${role}-<name>/control.sock (`sift status --control`, `sift-tui`).
          null: only root and `user`.
        '';
      };

      settings = mkOption {
        type = toml.type;
        default = { };
        example = { rescan_interval = 600; };
        description = ''
          Further config keys (docs/config.md), rendered to TOML. The key comes from `pskFile`;
          state_dir and control_socket are set by the module.
        '';
      };
    };
  };

  masterOptions = {
    options.watched_dir = mkOption {
      type = types.str;
      example = "/data/science";
      description = "Directory to publish. `user` needs read access; it may be read-only.";
    };
  };

  peerOptions = {
    options = {
      master_addr = mkOption {
        type = types.str;
        example = "10.10.10.5:7777";
        description = "Where the master listens (HOST:PORT).";
      };
      local_dir = mkOption {
        type = types.str;
        example = "/data/local";
        description = ''
          The mirror. Created (owned by `user`) if missing. A non-empty directory sift has not
          synced before is refused unless `settings.adopt = true`.
        '';
      };
    };
  };

  unitName = role: name: "sift-${role}-${name}";

  port = instance: lib.toInt (lib.last (lib.splitString ":" instance.bind_addr));

  configFile = role: name: instance:
    let
      unit = unitName role name;
      roleKeys =
        if role == "master" then { inherit (instance) watched_dir; }
        else { inherit (instance) master_addr local_dir; };
    in
    toml.generate "${unit}.toml" (
      instance.settings
      // roleKeys
      // {
        inherit (instance) bind_addr;
        state_dir = "/var/lib/${unit}";
        control_socket = "/run/${unit}/control.sock";
      }
      // lib.optionalAttrs (instance.controlGroup != null) {
        control_group = instance.controlGroup;
      }
    );

  service = role: name: instance:
    let
      unit = unitName role name;
      # The daemon must be in the control group to hand the socket to it.
      extraGroup = instance.controlGroup != null && instance.controlGroup != instance.group;
    in
    lib.nameValuePair unit {
      description = "sift ${role} ${name}";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      serviceConfig = {
        ExecStart = lib.concatStringsSep " " [
          (lib.getExe cfg.package)
          role
          "start"
          "--config ${configFile role name instance}"
          # %d is $CREDENTIALS_DIRECTORY: the key as a file only this service can read.
          "--psk-file %d/psk"
        ];
        LoadCredential = "psk:${instance.pskFile}";
        User = instance.user;
        Group = instance.group;
        SupplementaryGroups = lib.optional extraGroup instance.controlGroup;
        Restart = "on-failure";
        RestartSec = 5;
        # Exit status 2 is a bad config or usage: restarting would only repeat the error.
        RestartPreventExitStatus = 2;

        StateDirectory = unit;
        StateDirectoryMode = "0700";
        # Holds the control socket. The control group must be able to enter it; when that group
        # is not the directory's group, the socket's own mode and owner guard it.
        RuntimeDirectory = unit;
        RuntimeDirectoryMode = if extraGroup then "0755" else "0750";
        ReadWritePaths = lib.optional (role == "peer") instance.local_dir;

        # Hardening: sift needs TCP, its Unix control socket and file access, nothing else.
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = "read-only"; # data may live under /home; writes only where allowed above
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        CapabilityBoundingSet = "";
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" ];
        SystemCallErrorNumber = "EPERM";
        UMask = "0027";
      };
    };

  enabled = instances: lib.filterAttrs (_: instance: instance.enable) instances;
  masters = enabled cfg.masters;
  peers = enabled cfg.peers;
  instances = lib.attrValues masters ++ lib.attrValues peers;
in
{
  options.services.sift = {
    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalMD "sift built by this repository's `nix/package.nix`";
      description = "The sift package (provides `sift` and `sift-tui`).";
    };

    masters = mkOption {
      type = types.attrsOf (types.submodule [ (instanceOptions "master" 7777) masterOptions ]);
      default = { };
      description = "sift masters, each publishing one directory. Unit: sift-master-<name>.";
    };

    peers = mkOption {
      type = types.attrsOf (types.submodule [ (instanceOptions "peer" 7778) peerOptions ]);
      default = { };
      description = "sift peers, each mirroring one master. Unit: sift-peer-<name>.";
    };
  };

  config = lib.mkIf (instances != [ ]) {
    assertions = map
      (instance: {
        assertion = lib.intersectLists reservedKeys (lib.attrNames instance.settings) == [ ];
        message = "services.sift: settings must not set ${lib.concatStringsSep ", " reservedKeys}"
          + " (use pskFile and controlGroup; the module sets state_dir and control_socket)";
      })
      instances;

    systemd.services =
      lib.mapAttrs' (service "master") masters // lib.mapAttrs' (service "peer") peers;

    # sift creates local_dir itself, but ProtectSystem=strict leaves its parent read-only.
    systemd.tmpfiles.rules =
      lib.mapAttrsToList (_: p: "d ${p.local_dir} 0755 ${p.user} ${p.group} - -") peers;

    networking.firewall.allowedTCPPorts = map port (lib.filter (i: i.openFirewall) instances);

    users.users.sift = lib.mkIf (lib.any (i: i.user == "sift") instances) {
      isSystemUser = true;
      group = "sift";
      description = "sift daemons";
    };
    users.groups.sift = lib.mkIf (lib.any (i: i.group == "sift") instances) { };

    # `sift status` and `sift-tui` for operators.
    environment.systemPackages = [ cfg.package ];
  };
}
