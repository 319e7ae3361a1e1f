#!/usr/bin/env python3
"""unit_cmdline.py — the command line systemd would run for one Exec*=
line of a unit, for tests that cannot have systemd as PID 1
(systemd_unit.sh).

  unit_cmdline.py UNIT KEY INSTANCE ETC_ROOT [VAR=VALUE...]

Prints the argv of the unit's KEY= line (ExecStartPre, ExecStart), one
argument per line, for the instance INSTANCE (escaped, as in
NAME@INSTANCE.service), the way systemd.service(5) "Command lines" and
systemd.unit(5) "Specifiers" describe it, for what chainfs@.service uses
and nothing more (anything else is refused, so the unit cannot grow a
construct this emulation gets wrong):
  - specifiers %i (the instance), %f (the instance unescaped as a path,
    with a leading /), %%; in a command line, in each word after the
    split (a backslash of %i stays as it is);
  - the environment: Environment= lines, then every EnvironmentFile=
    (read below ETC_ROOT instead of /, "-" prefix: may be missing), a
    later assignment winning, then the VAR=VALUE given here (what
    systemd sets itself, e.g. STATE_DIRECTORY);
  - words unquoted like a shell does with '...' and "..." (C escapes
    are not used by the unit and are refused), then "$$" -> "$",
    "${VAR}" replaced inside a word, a word "$VAR" replaced by the
    value split at whitespace (zero or more words).
"""
import re
import shlex
import subprocess
import sys


def die(msg):
    print("unit_cmdline.py: " + msg, file=sys.stderr)
    sys.exit(2)


def unescape_path(instance):
    # systemd-escape --unescape --path: the tool itself, not a copy of it
    out = subprocess.run(["systemd-escape", "--unescape", "--path", instance],
                         check=True, capture_output=True, text=True).stdout
    return out.rstrip("\n")


def specifiers(text, instance, path):
    def rep(m):
        c = m.group(1)
        if c == "%":
            return "%"
        if c == "i":
            return instance
        if c == "f":
            return path
        die("specifier %%%s is not emulated" % c)
    return re.sub(r"%(.)", rep, text)


def assignments(text):
    env = {}
    for word in shlex.split(text):
        if "=" not in word:
            die("not an assignment: %r" % word)
        k, v = word.split("=", 1)
        env[k] = v
    return env


def env_file(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            env.update(assignments(line))
    return env


def expand_word(word, env):
    m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
    if m:
        return env.get(m.group(1), "").split()
    out, i = "", 0
    while i < len(word):
        if word.startswith("$$", i):
            out, i = out + "$", i + 2
            continue
        m = re.match(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", word[i:])
        if m:
            out, i = out + env.get(m.group(1), ""), i + m.end()
            continue
        if word[i] == "$":
            die("a lone $ in %r is not emulated" % word)
        out, i = out + word[i], i + 1
    return [out]


def main():
    if len(sys.argv) < 5:
        die("usage: unit_cmdline.py UNIT KEY INSTANCE ETC_ROOT [VAR=VALUE...]")
    unit, key, instance, etc_root = sys.argv[1:5]
    path = unescape_path(instance)
    env, lines = {}, []
    section = None
    with open(unit) as f:
        for raw in f:
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line
                continue
            if line.endswith("\\"):
                die("continued lines are not emulated")
            k, v = line.split("=", 1)
            if section != "[Service]":
                continue
            if k == key:
                lines.append(v)  # specifiers per word, after the split
                continue
            v = specifiers(v, instance, path)
            if k == "Environment":
                env.update(assignments(v))
            elif k == "EnvironmentFile":
                optional = v.startswith("-")
                p = v[1:] if optional else v
                if not p.startswith("/etc/"):
                    die("EnvironmentFile outside /etc: %s" % p)
                try:
                    env.update(env_file(etc_root + p[len("/etc"):]))
                except FileNotFoundError:
                    if not optional:
                        raise
    for a in sys.argv[5:]:
        env.update(assignments(shlex.quote(a)))
    if len(lines) != 1:
        die("%d %s= lines" % (len(lines), key))
    cmd = lines[0]
    if cmd[:1] in "-@:+!":
        die("command prefixes are not emulated: %r" % cmd)
    if "\\" in cmd:
        die("C escapes are not emulated")
    argv = []
    for word in shlex.split(cmd):
        argv += expand_word(specifiers(word, instance, path), env)
    for a in argv:
        if "\n" in a:
            die("a newline in an argument")
        print(a)


main()
