# Evaluates flake.nix's outputs without nixpkgs, for tests/test_nix_files.py: a stub `nixpkgs`
# whose callPackage returns a fake store path, so the wiring (packages, apps, devShells, checks,
# nixosModules) is checked, not the builds.
let
  b = builtins;
  flake = import ../../flake.nix;
  genAttrs = names: f: b.listToAttrs (map (name: { inherit name; value = f name; }) names);

  pkgsFor = system: {
    stdenv.hostPlatform.system = system;
    callPackage = path: _: {
      outPath = "/nix/store/00000000000000000000000000000000-sift-${system}";
      devEnv = "python-env";
      builtFrom = b.baseNameOf path;
    };
    mkShell = attrs: attrs;
    ruff = "ruff";
    gnumake = "gnumake";
    nix = "nix";
    testers.runNixOSTest = test: { vmTest = b.baseNameOf test; };
  };

  nixpkgs = {
    lib = { inherit genAttrs; };
    legacyPackages = genAttrs [ "x86_64-linux" "aarch64-linux" ] pkgsFor;
  };

  outputs = flake.outputs { self = outputs; inherit nixpkgs; };
in
{
  inherit (flake) description;
  nixpkgsUrl = flake.inputs.nixpkgs.url;
  # `path`, not `outPath`: JSON renders an attribute set with outPath as just that string.
  packages = b.mapAttrs
    (_: p: { default = { path = p.default.outPath; inherit (p.default) builtFrom; }; })
    outputs.packages;
  inherit (outputs) apps devShells;
  checks = b.mapAttrs (_: c: { package = c.package.outPath; inherit (c) vm; }) outputs.checks;
  nixosModule = b.baseNameOf outputs.nixosModules.default;
}
