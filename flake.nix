{
  description = "Flynn: a self-hosted Heroku-style PaaS rebuilt as a systemd appliance";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: {
        flynn = pkgs.callPackage ./nix/package.nix { src = self; };
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.flynn;
      });

      overlays.default = final: _prev: {
        flynn = final.callPackage ./nix/package.nix { src = self; };
      };

      # The module takes this flake's package by default; its services are the unit files of
      # units/ shipped inside the package (systemd.packages), never re-typed in Nix.
      nixosModules.flynn =
        { pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.flynn.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.flynn;
        };
      nixosModules.default = self.nixosModules.flynn;
    };
}
