# Evaluates nix/module.nix without nixpkgs, for tests/test_nix_files.py: a stub `lib` with just
# what the module uses (built from builtins), a stub `pkgs`, and a tiny stand-in for the option
# system (each instance is its declared defaults overlaid with the given values). The rendered
# TOML settings are returned as JSON after a `#` in the config file's fake store path.
{ masters ? { }, peers ? { } }:

let
  b = builtins;

  lib = rec {
    mkOption = option: option;
    mkEnableOption = what: { default = false; description = "Whether to enable ${what}."; };
    literalExpression = text: text;
    literalMD = text: text;
    types = {
      str = "str";
      bool = "bool";
      package = "package";
      nullOr = type: "nullOr ${type}";
      attrsOf = type: type;
      submodule = modules: { inherit modules; };
    };
    mkIf = condition: content: if condition then content else { };
    optional = condition: item: if condition then [ item ] else [ ];
    optionalAttrs = condition: attrs: if condition then attrs else { };
    filterAttrs = pred: attrs:
      b.listToAttrs (map (name: { inherit name; value = attrs.${name}; })
        (b.filter (name: pred name attrs.${name}) (b.attrNames attrs)));
    mapAttrs' = f: attrs: b.listToAttrs (map (name: f name attrs.${name}) (b.attrNames attrs));
    mapAttrsToList = f: attrs: map (name: f name attrs.${name}) (b.attrNames attrs);
    nameValuePair = name: value: { inherit name value; };
    inherit (b) attrValues attrNames concatStringsSep filter any;
    intersectLists = xs: ys: b.filter (y: b.elem y xs) ys;
    splitString = sep: text: b.filter b.isString (b.split sep text);
    last = list: b.elemAt list (b.length list - 1);
    toInt = text: b.fromJSON text;
    getExe = package: "${package}/bin/${package.meta.mainProgram}";
  };

  package = {
    outPath = "/nix/store/00000000000000000000000000000000-sift";
    meta.mainProgram = "sift";
  };

  pkgs = {
    formats.toml = _: {
      type = "toml";
      generate = name: value: "/nix/store/11111111111111111111111111111111-${name}#${b.toJSON value}";
    };
    callPackage = _: _: package;
  };

  module = config: import ../../nix/module.nix { inherit config lib pkgs; };

  declared = (module { }).options.services.sift;

  # Declared defaults // given values; lazy, so a default may read the instance (controlGroup).
  instance = type: given:
    let
      self = b.foldl' (acc: m: acc // defaults m) { } type.modules // given;
      defaults = m:
        let options = (if b.isFunction m then m { config = self; } else m).options;
        in b.mapAttrs (_: o: o.default) (lib.filterAttrs (_: o: o ? default) options);
    in
    self;

  config.services.sift = {
    inherit package;
    masters = b.mapAttrs (_: instance declared.masters.type) masters;
    peers = b.mapAttrs (_: instance declared.peers.type) peers;
  };
in
(module config).config
