"""``kilat keys``: CurveZMQ key pairs for Kilat's server, its users and its venues.

    kilat keys generate alice [--keys-dir DIR] [--force]    write alice.key + alice.key_secret
    kilat keys list [--keys-dir DIR] [--json]                names and public keys

The default directory is the config's ``[security] keys_dir``. See docs/security.md.
"""

from __future__ import annotations

import json

from gateways.auth import KeyFileError, generate_keys, list_keys
from kilat.config import load_config


def cmd_keys_generate(args) -> int:
    from kilat.cli import CliError

    config = load_config(args.config)
    keys_dir = args.keys_dir or config.security.keys_dir
    try:
        public_path, secret_path = generate_keys(keys_dir, args.name, overwrite=args.force)
    except KeyFileError as exc:
        raise CliError(str(exc)) from exc
    public = list_keys(keys_dir)[args.name].decode()
    known = {u.name for u in config.users} | {v.mic for v in config.venues} | {"server"}
    if args.json:
        print(json.dumps({"name": args.name, "public_key": public, "public_path": str(public_path),
                          "secret_path": str(secret_path), "in_config": args.name in known}))
        return 0
    print(f"{args.name}: public key {public}")
    print(f"  public  {public_path}   (give this file to the Kilat server)")
    print(f"  secret  {secret_path}   (mode 0600; keep it on the client's machine only)")
    if args.name not in known:
        print(f"  note: {args.name!r} is not a user or venue of the config; the server refuses "
              f"this key until it is")
    return 0


def cmd_keys_list(args) -> int:
    from kilat.cli import CliError

    keys_dir = args.keys_dir or load_config(args.config).security.keys_dir
    try:
        keys = list_keys(keys_dir)
    except KeyFileError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print(json.dumps({name: key.decode() for name, key in keys.items()}))
        return 0
    for name, key in keys.items():
        print(f"{name:24} {key.decode()}")
    print(f"{len(keys)} key(s) in {keys_dir}")
    return 0


def add_commands(sub, add) -> None:
    """Register ``kilat keys generate|list`` with the main parser's ``add(name, func, help, parent)``."""
    keys = sub.add_parser("keys", help="CurveZMQ key pairs").add_subparsers(title="keys")
    sp = add("generate", cmd_keys_generate, "write a CurveZMQ key pair for a user or venue", keys)
    sp.add_argument("name", help="the config user or venue MIC ('server' = Kilat's own pair)")
    sp.add_argument("--force", action="store_true", help="replace an existing pair")
    sp = add("list", cmd_keys_list, "list the public keys in the keys directory", keys)
