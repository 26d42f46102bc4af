{
  description = "sift: keep many machines byte-identical to one authoritative directory";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      siftFor = pkgs: self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      app = pkgs: program: {
        type = "app";
        program = "${siftFor pkgs}/bin/${program}";
        meta.description = "sift's ${program} command";
      };
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.callPackage ./nix/package.nix { };
      });

      apps = forAllSystems (pkgs: {
        default = app pkgs "sift";
        sift = app pkgs "sift";
        sift-tui = app pkgs "sift-tui";
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [ (siftFor pkgs).devEnv pkgs.ruff pkgs.gnumake pkgs.nix ];
        };
      });

      nixosModules.default = ./nix/module.nix;

      checks = forAllSystems (pkgs: {
        package = siftFor pkgs;
        vm = pkgs.testers.runNixOSTest ./nix/test.nix;
      });
    };
}
