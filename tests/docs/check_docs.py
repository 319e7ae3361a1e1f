#!/usr/bin/env python3
"""check_docs.py: the man pages, README.md and docs/FILES.md say the same.

chainfs-files(5) is generated from docs/FILES.md (docs/man/md2man.py), so
those two agree by construction; chainfs(8) and README.md are written by
hand, so this checks mechanically, both ways, that

  options      `chainfs --help`, the OPTIONS of chainfs(8) and the table
               of README.md's "Command line" name the same options;
  files        the tree of docs/FILES.md (its first block), the headings
               of FILES.md, THE TREE of chainfs(8), README.md's "The
               tree" and the sections of the built chainfs-files(5) name
               the same files;
  ctl          the commands a disk's ctl takes (fs/core/ctl.c's usage
               text, what `cat ctl` shows), FILES.md's ctl listing and
               its table of writes, `chainfs --help`, chainfs(8)'s
               "Steering a job: ctl" and the commands README.md echoes
               into a ctl are the same;
  pages        chainfs(8) has the sections it promises and its SEE ALSO.

  check_docs.py agree --chainfs BIN --source-root DIR --man8 F --man5 F
  check_docs.py man PAGE...     `man --warnings` says nothing, lexgrog
                                finds the whatis line (77: no man-db)

Exit 0 when everything agrees, 1 with one line per difference.
"""
import os
import re
import shutil
import subprocess
import sys

NAME_RE = re.compile(r'^\.?[a-z][a-z0-9_]*(\.[a-z]+)?$')
problems = []


def problem(msg):
    problems.append(msg)


# ---- roff -------------------------------------------------------------------
def roff_unescape(s):
    s = re.sub(r'\\f(\[[A-Z]*\]|\([A-Z]{2}|[A-Z1-4P])', '', s)
    s = re.sub(r'\\\[u([0-9A-F]{4})\]', lambda m: chr(int(m.group(1), 16)), s)
    for a, b in (('\\-', '-'), ('\\(aq', "'"), ('\\(dq', '"'), ('\\(bu', '*'),
                 ('\\&', ''), ('\\ ', ' '), ('\\c', ''), ('\\e', '\\')):
        s = s.replace(a, b)
    return s


def roff_args(rest):
    args, cur, i, quoted, any_ = [], '', 0, False, False
    while i < len(rest):
        c = rest[i]
        if quoted:
            if c == '"' and rest[i + 1:i + 2] == '"':
                cur += '"'
                i += 1
            elif c == '"':
                quoted = False
            else:
                cur += c
        elif c == '"':
            quoted, any_ = True, True
        elif c in ' \t':
            if cur or any_:
                args.append(cur)
            cur, any_ = '', False
        else:
            cur += c
        i += 1
    if cur or any_:
        args.append(cur)
    return args


def roff_line_text(line):
    """The text a roff line shows (font macros resolved), or None for a
    request that shows none."""
    if not line.startswith('.'):
        return roff_unescape(line)
    m = re.match(r'^\.([A-Z]{1,2})\s*(.*)$', line)
    if not m:
        return None
    mac, args = m.group(1), roff_args(m.group(2))
    if mac in ('B', 'I', 'SH', 'SS'):
        return roff_unescape(' '.join(args))
    if mac in ('BR', 'BI', 'IB', 'IR', 'RB', 'RI'):
        return roff_unescape(''.join(args))
    return None


def roff_sections(text):
    """{'.SH name': [lines]} and {'.SS name': [lines]} of a page."""
    sh, ss, cur_sh, cur_ss = {}, {}, None, None
    for line in text.split('\n'):
        if line.startswith('.SH'):
            cur_sh, cur_ss = roff_line_text(line), None
            sh[cur_sh] = []
            continue
        if line.startswith('.SS'):
            cur_ss = roff_line_text(line)
            ss[cur_ss] = []
            continue
        if cur_sh is not None:
            sh[cur_sh].append(line)
        if cur_ss is not None:
            ss[cur_ss].append(line)
    return sh, ss


def tp_tags(lines):
    return [roff_line_text(lines[k + 1]) for k, l in enumerate(lines[:-1])
            if l.startswith('.TP')]


def nf_block(lines):
    out, on = [], False
    for l in lines:
        if l.startswith('.nf') or l.startswith('.EX'):
            on = True
        elif l.startswith('.fi') or l.startswith('.EE'):
            if on:
                return out
        elif on:
            out.append(roff_unescape(l))
    return out


# ---- markdown ---------------------------------------------------------------
def md_sections(md):
    """[(level, title, [lines])] of a markdown file, level 0 for the text
    before the first heading."""
    out = [(0, '', [])]
    for line in md.split('\n'):
        m = re.match(r'^(#{1,6}) (.*)$', line)
        if m:
            out.append((len(m.group(1)), m.group(2).strip(), []))
        else:
            out[-1][2].append(line)
    return out


def md_section(md, title):
    for level, t, lines in md_sections(md):
        if t == title:
            return lines
    problem('no section "%s"' % title)
    return []


def md_code_blocks(lines):
    blocks, cur, prev_blank = [], None, True
    for l in lines:
        if l.startswith('    ') and (cur is not None or prev_blank):
            if cur is None:
                cur = []
                blocks.append(cur)
            cur.append(l[4:])
        elif not l.strip():
            if cur is not None:
                cur.append('')
        else:
            cur = None
        prev_blank = not l.strip()
    return [[x for x in b] for b in blocks]


def md_table_rows(lines, first_header):
    rows, on = [], False
    for l in lines:
        if l.startswith('|'):
            cells = [c.strip().replace('\\|', '|')
                     for c in re.split(r'(?<!\\)\|', l.strip()[1:-1])]
            if cells[0] == first_header:
                on = True
                continue
            if on and not re.fullmatch(r':?-+:?', cells[0]):
                rows.append(cells)
        else:
            on = False
    return rows


# ---- what is compared -------------------------------------------------------
def option_names(s):
    """'-c URI, --connect=URI' -> {'-c', '--connect'}; '-o bandwidth=N'
    -> {'bandwidth'}."""
    names = set()
    for part in re.split(r',\s*|\s+/\s+', s.strip()):
        part = part.strip()
        m = (re.match(r'^-o\s+([a-z_]+)', part) or re.match(r'^(--[a-z-]+)', part)
             or re.match(r'^(-[a-zA-Z])(\s|$)', part))
        if m:
            names.add(m.group(1))
    return names


def tree_names(block):
    """The file names of a tree drawing: the cells (split by two or more
    spaces) that have no blank, split at / and ','; descriptions have
    blanks. MOUNTPOINT, <domain> and the like are not names."""
    names = set()
    for line in block:
        line = line.replace(', ', ',')
        for cell in re.split(r'\s{2,}', line.strip()):
            if not cell or ' ' in cell:
                continue
            for comp in re.split(r'[/,]', cell):
                if NAME_RE.match(comp) and comp != 'vms':
                    names.add(comp)
    return names


def heading_names(titles):
    names = set()
    for t in titles:
        t = t.replace(', ', ',')
        if ' ' in t:
            continue
        for comp in re.split(r'[/,]', t):
            if NAME_RE.match(comp):
                names.add(comp)
    return names


def compare(what, sets):
    """SETS: [(where, set)]; every set must equal every other."""
    union = set().union(*(s for _, s in sets))
    for where, s in sets:
        if not s:
            problem('%s: found none in %s (the check no longer finds them)' % (what, where))
            continue
        missing = sorted(union - s)
        if missing:
            others = [w for w, o in sets if set(missing) & o]
            problem('%s: %s lacks %s (named in %s)'
                    % (what, where, ', '.join(missing), '; '.join(others)))


def agree(chainfs, root, man8_path, man5_path):
    help_text = subprocess.run([chainfs, '--help'], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, check=False).stdout
    read = lambda p: open(p, encoding='utf-8').read()
    readme = read(os.path.join(root, 'README.md'))
    files_md = read(os.path.join(root, 'docs', 'FILES.md'))
    ctl_c = read(os.path.join(root, 'fs', 'core', 'ctl.c'))
    man8 = read(man8_path)
    man5 = read(man5_path)
    sh8, ss8 = roff_sections(man8)
    sh5, ss5 = roff_sections(man5)

    # options
    help_opts = set()
    in_opts = False
    for line in help_text.split('\n'):
        if line.startswith('options:'):
            in_opts = True
            continue
        if in_opts and not line.strip():
            break
        m = re.match(r'^  (-\S.*?)(\s{2,}|$)', line) if in_opts else None
        if m:
            help_opts |= option_names(m.group(1))
    man8_opts = set()
    for tag in tp_tags(sh8.get('OPTIONS', [])):
        man8_opts |= option_names(tag or '')
    readme_opts = set()
    for row in md_table_rows(md_section(readme, 'Command line'), 'option'):
        for code in re.findall(r'`([^`]+)`', row[0]):
            readme_opts |= option_names(code)
    compare('options', [('chainfs --help', help_opts), ('chainfs.8 OPTIONS', man8_opts),
                        ('README.md "Command line"', readme_opts)])

    # files
    files_tree = tree_names(md_code_blocks(md_sections(files_md)[1][2])[0]) \
        if len(md_sections(files_md)) > 1 else set()
    files_heads = heading_names(t for lvl, t, _ in md_sections(files_md) if lvl >= 2)
    man8_tree = tree_names(nf_block(sh8.get('THE TREE', [])))
    readme_tree_blocks = md_code_blocks(md_section(readme, 'The tree'))
    readme_tree = tree_names(readme_tree_blocks[0]) if readme_tree_blocks else set()
    man5_heads = heading_names(list(sh5) + list(ss5))
    compare('files', [('docs/FILES.md (the tree at its top)', files_tree),
                      ('docs/FILES.md (its headings)', files_heads),
                      ('chainfs.8 THE TREE', man8_tree),
                      ('README.md "The tree"', readme_tree),
                      ('chainfs-files.5 (its sections)', man5_heads)])

    # ctl commands
    m = re.search(r'cfs_ctl_usage\[\]\s*=\s*((?:\s*"[^"\n]*")+)\s*;', ctl_c)
    code_cmds = set()
    for lit in re.findall(r'"([^"\n]*)"', m.group(1) if m else ''):
        w = re.match(r'^([a-z]+)\b', lit)
        if w:
            code_cmds.add(w.group(1))
    ctl_md = md_section(files_md, 'ctl')
    blocks = md_code_blocks(ctl_md)
    listing_cmds = set()
    for l in (blocks[0] if blocks else []):
        w = re.match(r'^([a-z]+)(\s|$)', l)
        if w and not re.match(r'^[a-z_]+:', l):
            listing_cmds.add(w.group(1))
    table_cmds = set()
    for row in md_table_rows(ctl_md, 'write'):
        for code in re.findall(r'`([^`]+)`', row[0]):
            table_cmds.add(code.split()[0])
    help_flat = ' '.join(help_text.split())
    hm = re.search(r'steer the disk: (.*?)\(cat ctl', help_flat)
    help_cmds = set()
    for part in (hm.group(1).split(',') if hm else []):
        w = re.match(r'^\s*([a-z]+)\b', part)
        if w:
            help_cmds.add(w.group(1))
    man8_cmds = set()
    for tag in tp_tags(ss8.get('Steering a job: ctl', [])):
        w = re.match(r'^([a-z]+)\b', tag or '')
        if w:
            man8_cmds.add(w.group(1))
    readme_cmds = set(re.findall(r'echo\s+"?([a-z]+)\b[^>\n]*>\s*\S*\bctl\b', readme))
    compare('ctl commands', [('fs/core/ctl.c (cat ctl)', code_cmds),
                             ('docs/FILES.md ctl listing', listing_cmds),
                             ('docs/FILES.md ctl table of writes', table_cmds),
                             ('chainfs --help', help_cmds),
                             ('chainfs.8 "Steering a job: ctl"', man8_cmds),
                             ('README.md (echo ... > ctl)', readme_cmds)])

    # chainfs(8)'s own shape
    for s in ('NAME', 'SYNOPSIS', 'DESCRIPTION', 'OPTIONS', 'THE TREE', 'ERRORS',
              'EXIT STATUS', 'EXAMPLES', 'FILES', 'SEE ALSO'):
        if s not in sh8:
            problem('chainfs.8 has no section %s' % s)
    see = ' '.join(filter(None, (roff_line_text(l) for l in sh8.get('SEE ALSO', []))))
    for ref in ('chainfs-files(5)', 'virsh(1)', 'mount.fuse3(8)', 'fusermount3(1)',
                'qemu-img(1)'):
        if ref not in see:
            problem('chainfs.8 SEE ALSO lacks %s' % ref)
    files8 = ' '.join(filter(None, (roff_line_text(l) for l in sh8.get('FILES', []))))
    for f in ('/var/lib/chainfs', 'chainfs@.service', 'fuse.chainfs', '/etc/fstab'):
        if f not in files8:
            problem('chainfs.8 FILES lacks %s' % f)
    # the way to the pages
    for ref in ('man chainfs', 'man chainfs-files'):
        if ref not in help_flat:
            problem('chainfs --help does not point to `%s`' % ref)
        if ref not in ' '.join(readme.split()):
            problem('README.md does not point to `%s`' % ref)
    # the fstab line of the page is README's
    fstab8 = [l for l in nf_block(sh8.get('FILES', [])) if 'fuse.chainfs' in l]
    fstab_readme = [l.strip() for l in readme.split('\n')
                    if re.match(r'^\s+\S+\s+\S+\s+fuse\.chainfs\s', l)]
    for l in fstab8:
        if l.split() not in [r.split() for r in fstab_readme]:
            problem('chainfs.8 FILES: fstab line "%s" is not README.md\'s (%s)'
                    % (l, '; '.join(fstab_readme) or 'none'))


# ---- man --warnings ---------------------------------------------------------
def lint(pages):
    if not shutil.which('man') or not shutil.which('groff') or not shutil.which('lexgrog'):
        print('SKIP: man-db and groff are not installed')
        return 77
    env = dict(os.environ, LC_ALL='C.UTF-8', MANROFFSEQ='', MANWIDTH='80')
    runs = [
        # lintian's own check (groff-message)
        ['man', '--warnings', '-E', 'UTF-8', '-l', '-Tutf8', '-Z'],
        # as a user reads it
        ['man', '--warnings', '-l'],
        # every warning groff has
        ['man', '--warnings=w', '-l'],
    ]
    for page in pages:
        for cmd in runs:
            r = subprocess.run(cmd + [page], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
            if r.returncode != 0 or r.stderr.strip():
                problem('%s: `%s` (status %d): %s' % (page, ' '.join(cmd), r.returncode,
                                                      r.stderr.strip()))
        r = subprocess.run(['lexgrog', page], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        base = os.path.basename(page).rsplit('.', 1)[0]
        if r.returncode != 0 or not re.search(r': "%s - \S' % re.escape(base), r.stdout):
            problem('%s: lexgrog finds no whatis line "%s - ...": %s'
                    % (page, base, r.stdout.strip()))
        r = subprocess.run(['man', '-l', page], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        if len(r.stdout.split('\n')) < 40:
            problem('%s: renders to %d lines only' % (page, len(r.stdout.split('\n'))))
    return 0


def main(argv):
    if len(argv) >= 1 and argv[0] == 'agree':
        import argparse
        ap = argparse.ArgumentParser()
        ap.add_argument('--chainfs', required=True)
        ap.add_argument('--source-root', required=True)
        ap.add_argument('--man8', required=True)
        ap.add_argument('--man5', required=True)
        a = ap.parse_args(argv[1:])
        agree(a.chainfs, a.source_root, a.man8, a.man5)
        status = 0
    elif len(argv) >= 2 and argv[0] == 'man':
        status = lint(argv[1:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in problems:
        print('FAIL: ' + p)
    if problems:
        return 1
    if status == 0:
        print('ok')
    return status


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
