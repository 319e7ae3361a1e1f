#!/usr/bin/env python3
"""md2man.py: the markdown subset of docs/FILES.md into a man(7) page.

docs/FILES.md is the one description of the files of a chainfs mount;
chainfs-files(5) is made from it at build time (docs/man/meson.build), so
the two cannot drift. This converts exactly the subset FILES.md uses and
refuses anything else (an HTML tag, a block quote, a heading below ###,
a table row outside a table), so that a construct it does not know fails
the build instead of turning into garbage on a terminal:

  # Title              the page's title; the text up to the first ## is
                       DESCRIPTION
  ## Heading           .SH Heading (file names keep their case)
  ### Heading          .SS Heading
  paragraph lines      one filled paragraph (.PP)
  - item / 1. item     a bullet / numbered list, one level of nesting
                       (an item indented by two more spaces)
      code (4 spaces)  after a blank line: a literal block (.nf)
  | a | b | c |        a table: each row becomes a tagged paragraph
                       (.TP), the first cell the tag, the others the text
                       (with their header's name when there are more than
                       two columns), since a wide table does not fit 80
                       columns
  `code` **strong** *em* [text](url)
  <!-- ... -->         a comment (from a line's start to a line's end):
                       left out of the page

usage: md2man.py --name NAME --section N --title-line TEXT
                 [--version V] [--see-also 'page(n)' ...] IN OUT
"""
import argparse
import os
import re
import sys


class Md2ManError(Exception):
    pass


def esc(text):
    """Escape plain text for roff: backslash, minus, non-ASCII."""
    out = []
    for ch in text:
        if ch == '\\':
            out.append('\\e')
        elif ch == '-':
            # a minus, not a hyphen: options and commands stay typeable
            out.append('\\-')
        elif ord(ch) > 126 or (ord(ch) < 32 and ch != '\t'):
            out.append('\\[u%04X]' % ord(ch))
        else:
            out.append(ch)
    return ''.join(out)


FONTS = {frozenset(): 'R', frozenset('B'): 'B', frozenset('I'): 'I',
         frozenset('BI'): 'BI'}


def font_escape(styles):
    return '\\f[%s]' % FONTS[frozenset(styles)]


INLINE = re.compile(r'`([^`]+)`|\*\*(.+?)\*\*|(?<![\w*])\*([^*\s](?:[^*]*?[^*\s])?)\*(?![\w*])'
                    r'|\[([^\]]+)\]\(([^)\s]+)\)')


def inline(text, styles=frozenset(), where=''):
    """Markdown inline markup into roff font escapes. STYLES: the fonts in
    force around TEXT, restored explicitly after each span (roff's \\fP
    remembers one level only)."""
    out = []
    pos = 0
    for m in INLINE.finditer(text):
        out.append(esc(text[pos:m.start()]))
        if m.group(1) is not None:        # `code`: bold, literal
            inner = styles | {'B'}
            out.append(font_escape(inner) + esc(m.group(1)) + font_escape(styles))
        elif m.group(2) is not None:      # **strong**
            inner = styles | {'B'}
            out.append(font_escape(inner) + inline(m.group(2), inner, where)
                       + font_escape(styles))
        elif m.group(3) is not None:      # *em*
            inner = styles | {'I'}
            out.append(font_escape(inner) + inline(m.group(3), inner, where)
                       + font_escape(styles))
        else:                             # [text](url): the text
            out.append(inline(m.group(4), styles, where))
        pos = m.end()
    rest = text[pos:]
    if '`' in rest:
        raise Md2ManError('%s: unbalanced backtick in: %s' % (where, text))
    if re.search(r'<[a-zA-Z/][^>]*>', rest) and re.search(r'</?(br|p|a|b|i|em|code|div|span)\b', rest):
        raise Md2ManError('%s: HTML is not supported: %s' % (where, text))
    out.append(esc(rest))
    return ''.join(out)


def text_line(s):
    """One roff text line: never starts with a control character."""
    if s.startswith(('.', "'")) or s.startswith(' '):
        return '\\&' + s
    return s


def macro_arg(s):
    return '"' + s.replace('"', '\\(dq') + '"'


def split_row(line, where):
    line = line.strip()
    if not (line.startswith('|') and line.endswith('|')):
        raise Md2ManError('%s: a table row must start and end with |: %s' % (where, line))
    cells = re.split(r'(?<!\\)\|', line[1:-1])
    return [c.strip().replace('\\|', '|') for c in cells]


def convert(md, name, section, title_line, version, see_also, src='FILES.md'):
    lines = md.split('\n')
    out = []
    date = ''  # as chainfs(8): the version dates the page, and builds stay reproducible
    manual = {'1': 'User Commands', '5': 'File Formats Manual',
              '8': 'System Administration'}.get(section, '')
    out.append('.\\" Generated from docs/%s by docs/man/md2man.py: edit that file, not this one.'
               % os.path.basename(src))
    out.append('.TH %s %s %s %s %s' % (
        macro_arg(esc(name.upper())), section, macro_arg(date),
        macro_arg(esc('chainfs ' + version if version else 'chainfs')), macro_arg(manual)))
    # no hyphenation, ragged right: file names, keys and commands stay
    # whole and typeable, as in chainfs(8)
    out.append('.nh')
    out.append('.ad l')
    out.append('.SH NAME')
    out.append('%s \\- %s' % (esc(name), esc(title_line)))

    i = 0
    n = len(lines)
    seen_title = False
    in_description = False

    def where():
        return '%s:%d' % (src, i + 1)

    def para(text_lines):
        text = ' '.join(l.strip() for l in text_lines)
        out.append('.PP')
        out.append(text_line(inline(text, where=where())))

    while i < n:
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.startswith('<!--'):
            # a comment for the file's editors: not in the page
            while i < n and '-->' not in lines[i]:
                i += 1
            if i == n:
                raise Md2ManError('%s: unterminated <!-- comment' % src)
            if not lines[i].rstrip().endswith('-->'):
                raise Md2ManError('%s: text after the end of a comment' % where())
            i += 1
            continue
        if line.startswith('#'):
            m = re.match(r'^(#{1,3}) (.+)$', line)
            if not m:
                raise Md2ManError('%s: unsupported heading: %s' % (where(), line))
            level, title = len(m.group(1)), m.group(2).strip()
            if level == 1:
                if seen_title:
                    raise Md2ManError('%s: a second # title' % where())
                seen_title = True
                out.append('.SH DESCRIPTION')
                in_description = True
            elif level == 2:
                in_description = False
                out.append('.SH ' + macro_arg(inline(title, where=where())))
            else:
                if in_description:
                    raise Md2ManError('%s: ### before the first ##' % where())
                out.append('.SS ' + macro_arg(inline(title, where=where())))
            i += 1
            continue
        if not seen_title:
            raise Md2ManError('%s: text before the # title' % where())
        if line.startswith('    '):
            # a literal block: up to the next non-blank line indented less
            block = []
            while i < n and (lines[i].startswith('    ') or not lines[i].strip()):
                block.append(lines[i][4:] if lines[i].strip() else '')
                i += 1
            while block and not block[-1]:
                block.pop()
            out.append('.PP')
            out.append('.RS 4')
            out.append('.nf')
            for b in block:
                if '\t' in b:
                    b = b.expandtabs(8)
                out.append(text_line(esc(b)) if b else '')
            out.append('.fi')
            out.append('.RE')
            continue
        if line.startswith('|'):
            rows = []
            while i < n and lines[i].startswith('|'):
                rows.append(split_row(lines[i], where()))
                i += 1
            if len(rows) < 2 or not all(re.fullmatch(r':?-{3,}:?', c) for c in rows[1]):
                raise Md2ManError('%s: a table needs a header row and a |---| row' % where())
            header, body = rows[0], rows[2:]
            for r in body:
                if len(r) != len(header):
                    raise Md2ManError('%s: a table row with %d cells, the header has %d: %s'
                                      % (where(), len(r), len(header), ' | '.join(r)))
                out.append('.TP')
                out.append(text_line(inline(r[0], where=where())))
                first = True
                for h, c in zip(header[1:], r[1:]):
                    if not first:
                        out.append('.br')
                    first = False
                    cell = inline(c, where=where()) if c else '\\-'
                    if len(header) > 2:
                        cell = '\\f[I]%s:\\f[R] %s' % (esc(h), cell)
                    out.append(text_line(cell))
            continue
        m = re.match(r'^( *)(- |\d+\. )', line)
        if m:
            # a list: items at indent 0, nested items at indent 2
            depth0 = len(m.group(1))
            if depth0 != 0:
                raise Md2ManError('%s: a list must start at column 0' % where())
            nested = False
            while i < n and lines[i].strip():
                m = re.match(r'^( *)(- |(\d+)\. )(.*)$', lines[i])
                if not m:
                    raise Md2ManError('%s: expected a list item: %s' % (where(), lines[i]))
                indent = len(m.group(1))
                if indent not in (0, 2):
                    raise Md2ManError('%s: lists nest one level only' % where())
                item = [m.group(4)]
                cont = indent + len(m.group(2))
                i += 1
                while (i < n and lines[i].strip()
                       and not re.match(r'^ *(- |\d+\. )', lines[i])):
                    if not lines[i].startswith(' ' * cont) and not lines[i].startswith(' ' * 2):
                        raise Md2ManError('%s: a list item continues indented: %s'
                                          % (where(), lines[i]))
                    item.append(lines[i].strip())
                    i += 1
                if indent == 2 and not nested:
                    out.append('.RS 2')
                    nested = True
                elif indent == 0 and nested:
                    out.append('.RE')
                    nested = False
                mark = '\\(bu' if m.group(3) is None else m.group(3) + '.'
                out.append('.IP %s 4' % mark)
                out.append(text_line(inline(' '.join(item), where=where())))
            if nested:
                out.append('.RE')
            continue
        if re.match(r'^\s*(>|<[a-zA-Z]|```|\* |\+ )', line):
            raise Md2ManError('%s: unsupported markdown: %s' % (where(), line))
        block = []
        while (i < n and lines[i].strip() and not lines[i].startswith(('#', '|', '    '))
               and not re.match(r'^(- |\d+\. )', lines[i])):
            block.append(lines[i])
            i += 1
        para(block)

    if not seen_title:
        raise Md2ManError('%s: no # title' % src)
    if see_also:
        out.append('.SH SEE ALSO')
        refs = []
        for ref in see_also:
            m = re.fullmatch(r'([\w.+-]+)\((\w+)\)', ref)
            if not m:
                raise Md2ManError('--see-also %s: not page(section)' % ref)
            refs.append('.BR %s (%s)' % (esc(m.group(1)), m.group(2)))
        for k, r in enumerate(refs):
            out.append(r + (' ,' if k < len(refs) - 1 else ''))
    return '\n'.join(out) + '\n'


def main(argv):
    ap = argparse.ArgumentParser(description='docs/FILES.md into a man page')
    ap.add_argument('--name', required=True)
    ap.add_argument('--section', required=True)
    ap.add_argument('--title-line', required=True, help='the whatis line after "NAME \\-"')
    ap.add_argument('--version', default='')
    ap.add_argument('--see-also', action='append', default=[])
    ap.add_argument('input')
    ap.add_argument('output')
    a = ap.parse_args(argv)
    with open(a.input, encoding='utf-8') as f:
        md = f.read()
    try:
        page = convert(md, a.name, a.section, a.title_line, a.version, a.see_also,
                       src=a.input)
    except Md2ManError as e:
        print('md2man: %s' % e, file=sys.stderr)
        return 1
    tmp = a.output + '.tmp'
    with open(tmp, 'w', encoding='ascii') as f:
        f.write(page)
    os.replace(tmp, a.output)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
