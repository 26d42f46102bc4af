# NixOS VM test: one master and two peers, as services from module.nix, converge byte for byte.
# Run: nix build .#checks.x86_64-linux.vm (flake.nix passes this to pkgs.testers.runNixOSTest).
let
  # Test only: a key in the Nix store is fine here. Real deployments point pskFile at a secret.
  key = "vm-test-key";

  common = {
    imports = [ ./module.nix ];
    environment.etc."sift-psk" = {
      text = key;
      mode = "0400";
    };
  };

  peer = {
    imports = [ common ];
    services.sift.peers.edge = {
      enable = true;
      master_addr = "master:7777";
      local_dir = "/data/local";
      bind_addr = "0.0.0.0:7778";
      pskFile = "/etc/sift-psk";
      openFirewall = true;
    };
  };
in
{
  name = "sift";

  nodes = {
    master = {
      imports = [ common ];
      systemd.tmpfiles.rules = [
        "d /data/science 0755 root root - -"
        "f /data/science/hello.txt 0644 root root - hello"
      ];
      services.sift.masters.lab = {
        enable = true;
        watched_dir = "/data/science";
        bind_addr = "0.0.0.0:7777";
        pskFile = "/etc/sift-psk";
        openFirewall = true;
        settings.rescan_interval = 60;
      };
      users.users.alice = {
        isNormalUser = true;
        extraGroups = [ "sift" ];
      };
      users.users.bob.isNormalUser = true;
    };
    peer1 = peer;
    peer2 = peer;
  };

  testScript = ''
    key = "${key}"
    socket = "/run/sift-master-lab/control.sock"

    start_all()
    master.wait_for_unit("sift-master-lab.service")
    master.wait_for_open_port(7777)
    for p in (peer1, peer2):
        p.wait_for_unit("sift-peer-edge.service")
        p.wait_until_succeeds("test \"$(cat /data/local/hello.txt)\" = hello", timeout=60)

    with subtest("a new file on the master reaches both peers, byte for byte"):
        master.succeed("head -c 8M /dev/urandom > /data/science/big.bin")
        want = master.succeed("sha256sum < /data/science/big.bin").split()[0]
        for p in (peer1, peer2):
            p.wait_until_succeeds(f"sha256sum < /data/local/big.bin | grep -q {want}", timeout=120)

    with subtest("status over the network, with the key"):
        out = master.succeed(f"SIFT_PSK={key} sift status --master 127.0.0.1:7777")
        assert "Connected peers  : 2" in out, out
        master.fail("SIFT_PSK=wrong sift status --master 127.0.0.1:7777")

    with subtest("the key is in neither the config file nor the environment"):
        unit = master.succeed("systemctl cat sift-master-lab.service")
        config = next(w for w in unit.split() if w.endswith("-sift-master-lab.toml"))
        master.fail(f"grep -q psk {config}")
        pid = master.succeed("systemctl show -p MainPID --value sift-master-lab").strip()
        master.fail(f"grep -q {key} /proc/{pid}/environ")

    with subtest("the control socket serves root and the control group only"):
        master.succeed(f"sift status --control {socket}")
        master.succeed(f"su - alice -c 'sift status --control {socket}'")
        master.fail(f"su - bob -c 'sift status --control {socket}'")

    with subtest("a crashed daemon is restarted"):
        master.succeed("systemctl kill --signal=SIGKILL sift-master-lab.service")
        master.wait_until_succeeds(f"SIFT_PSK={key} sift status --master 127.0.0.1:7777")
        master.succeed("echo more > /data/science/more.txt")
        for p in (peer1, peer2):
            p.wait_until_succeeds("test \"$(cat /data/local/more.txt)\" = more", timeout=60)
  '';
}
