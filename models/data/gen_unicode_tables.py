#!/usr/bin/env python3
"""Generates models/data/unicode_data.inc, the tables models/unicode_tables.c
includes: the Unicode data needed to reproduce the CLIP tokenizer of Stable
Diffusion (transformers' CLIPTokenizer with ftfy, pre-tokenized with the
`regex` module).

    python3 models/data/gen_unicode_tables.py > models/data/unicode_data.inc

Needs the `regex` module (the one transformers uses); takes ~30 s.

Every table is derived from the running interpreter, so that the C code
answers exactly as Python would:
  - pre-tokenizer classes from the `regex` module itself, with IGNORECASE as
    CLIP compiles its pattern (that is why U+0345 matches no alternative);
  - str.lower(), str.isspace(), NFC and Cased/Case_Ignorable (the final-sigma
    rule) from CPython's unicodedata;
  - ftfy 6.x's width map, ligatures, and HTML5 entity set from html.entities.
The versions used are written into the output header comment.
"""
import html
import html.entities
import sys
import unicodedata

import regex

MAXCP = 0x110000


def cps():
    return (c for c in range(MAXCP) if not 0xD800 <= c <= 0xDFFF)


def runs_of(pred):
    """[lo, hi] ranges where pred(c) is true."""
    out, start, prev = [], None, None
    for c in cps():
        if pred(c):
            if start is None or c != prev + 1:
                if start is not None:
                    out.append((start, prev))
                start = c
            prev = c
    if start is not None:
        out.append((start, prev))
    return out


def valued_runs(fn):
    """[lo, hi, v] ranges of equal non-zero fn(c)."""
    out = []
    for c in cps():
        v = fn(c)
        if not v:
            continue
        if out and out[-1][1] == c - 1 and out[-1][2] == v:
            out[-1][1] = c
        else:
            out.append([c, c, v])
    return out


def emit_rows(name, ctype, rows, per_line):
    print(f"static const {ctype} {name}[] = {{")
    for i in range(0, len(rows), per_line):
        print("    " + " ".join(rows[i:i + per_line]))
    print("};\n")


def emit_ranges(name, ranges):
    emit_rows(name, "struct uc_range", [f"{{0x{a:X},0x{b:X}}}," for a, b in ranges], 6)


def emit_rvals(name, ranges):
    emit_rows(name, "struct uc_rval", [f"{{0x{a:X},0x{b:X},{v}}}," for a, b, v in ranges], 5)


def c_string(s):
    out = []
    for b in s.encode("utf-8"):
        ch = chr(b)
        out.append(ch if ch.isalnum() and b < 128 else f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def cp_list(s, n):
    v = [ord(ch) for ch in s]
    assert len(v) <= n, s
    return "{" + ",".join(f"0x{x:X}" for x in v + [0] * (n - len(v))) + "}"


def main():
    # --- pre-tokenizer classes: which alternative of CLIP's pattern takes c.
    lp = regex.compile(r"(?i)[\p{L}]")
    np_ = regex.compile(r"(?i)[\p{N}]")
    pp = regex.compile(r"(?i)[^\s\p{L}\p{N}]")

    def cls(c):
        ch = chr(c)
        lm, nm, pm = bool(lp.fullmatch(ch)), bool(np_.fullmatch(ch)), bool(pp.fullmatch(ch))
        assert lm + nm + pm <= 1, hex(c)
        return 1 if lm else 2 if nm else 3 if pm else 4   # 4: matches nothing
    classes = valued_runs(lambda c: 0 if cls(c) == 3 else cls(c))

    # The contraction / special-token letters may be written with any
    # character the regex module folds onto them (IGNORECASE).
    # Candidates: anything whose case mappings touch ASCII (a full scan per
    # letter would take minutes).
    folds = []
    for c in cps():
        ch = chr(c)
        if c < 128 or not any(k.isascii() for k in ch.lower() + ch.upper() + ch.casefold()):
            continue
        for x in "abcdefghijklmnopqrstuvwxyz":
            if regex.fullmatch("(?i)" + x, ch):
                folds.append((c, ord(x)))
    folds.sort()

    re_space = runs_of(lambda c: bool(regex.fullmatch(r"\s", chr(c))))
    py_space = runs_of(lambda c: chr(c).isspace())
    decimal = runs_of(lambda c: unicodedata.category(chr(c)) == "Nd")

    # --- str.lower(): runs of equal delta with stride 1 or 2.
    lowers = []
    for c in cps():
        lo = chr(c).lower()
        if lo == chr(c):
            continue
        if len(lo) != 1:
            assert c == 0x130 and lo == "i\u0307", hex(c)   # handled in C
            continue
        lowers.append((c, ord(lo) - c))
    lruns = []   # [lo, hi, delta, stride]
    for c, d in lowers:
        if lruns:
            r = lruns[-1]
            if r[2] == d and r[0] == r[1] and c - r[1] in (1, 2):
                r[1], r[3] = c, c - r[1]
                continue
            if r[2] == d and r[0] != r[1] and c - r[1] == r[3]:
                r[1] = c
                continue
        lruns.append([c, c, d, 1])

    # --- Cased / Case_Ignorable, probed through CPython's final-sigma rule
    # (unicodedata does not expose them).
    def final_sigma(s):
        return s.lower().endswith("\u03c2")
    ignorable = lambda c: final_sigma("A" + chr(c) + "\u03a3") and \
        ("A\u03a3" + chr(c)).lower()[1] == "\u03c2"
    cased = lambda c: not ignorable(c) and final_sigma(chr(c) + "\u03a3")
    case_ign = runs_of(ignorable)
    cased_r = runs_of(cased)

    # --- NFC: combining classes, canonical decompositions, primary composites.
    ccc = valued_runs(lambda c: unicodedata.combining(chr(c)))
    decomp, comp = [], []
    max_decomp = max(len(unicodedata.normalize("NFD", chr(c))) for c in cps())
    for c in cps():
        d = unicodedata.decomposition(chr(c))
        if not d or d.startswith("<"):
            continue
        parts = [int(x, 16) for x in d.split()]
        assert 1 <= len(parts) <= 2
        decomp.append((c, parts[0], parts[1] if len(parts) == 2 else 0))
        if len(parts) == 2 and unicodedata.normalize("NFC", chr(c)) == chr(c):
            comp.append((parts[0], parts[1], c))
    comp.sort()

    # --- ftfy 6.x character fixers.
    width = {0x3000: " "}
    for i in range(0xFF01, 0xFFF0):
        alt = unicodedata.normalize("NFKC", chr(i))
        if alt != chr(i):
            width[i] = alt
    ligatures = {
        "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz",
        "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž", "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj",
        "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj", "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl",
        "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
    }
    cp1252 = [ord(bytes([b]).decode("cp1252", errors="ignore") or chr(b))
              for b in range(0x80, 0xA0)]
    for b in range(0x80, 0xA0):   # html.unescape agrees for &#128;..&#159;
        assert html.unescape(f"&#{b};") == chr(cp1252[b - 0x80])

    # ftfy.chardata._build_html_entities; names longer than ftfy's
    # HTML_ENTITY_RE allows ({1,24}) can never match and are dropped.
    ents = {}
    for name, ch in html.entities.html5.items():
        if name.endswith(";"):
            ents[name[:-1]] = ch
            if name == name.lower():
                up = "&" + name.upper()
                if html.unescape(up) == up:
                    ents[name.upper()[:-1]] = ch.upper()
    ents = sorted((k, v) for k, v in ents.items() if len(k) <= 24)
    assert all(k.isascii() and k.isalnum() for k, _ in ents)

    py = sys.version.split()[0]
    print("/* GENERATED by models/data/gen_unicode_tables.py -- do not edit.")
    print(f" * Python {py}, unicodedata {unicodedata.unidata_version}, "
          f"regex {regex.__version__}.")
    print(" * Unicode data derived from those (Unicode licence); HTML5 entity")
    print(" * names from Python's html.entities. Included by models/unicode_tables.c. */\n")
    print(f"#define MAX_DECOMP {max_decomp} /* longest canonical decomposition */\n")
    emit_rvals("uc_class", classes)
    emit_rows("uc_fold", "struct uc_pair",
              [f"{{0x{a:X},0x{b:X}}}," for a, b in folds], 6)
    emit_ranges("uc_re_space", re_space)
    emit_ranges("uc_py_space", py_space)
    emit_ranges("uc_decimal", decimal)
    emit_rows("uc_lower", "struct uc_delta",
              [f"{{0x{a:X},0x{b:X},{d},{s}}}," for a, b, d, s in lruns], 4)
    emit_ranges("uc_cased", cased_r)
    emit_ranges("uc_case_ignorable", case_ign)
    emit_rvals("uc_ccc", ccc)
    emit_rows("uc_decomp", "struct uc_decomp",
              [f"{{0x{a:X},0x{b:X},0x{c:X}}}," for a, b, c in decomp], 4)
    emit_rows("uc_comp", "struct uc_decomp",
              [f"{{0x{a:X},0x{b:X},0x{c:X}}}," for a, b, c in comp], 4)
    wruns, wmulti = [], []
    for c, s in sorted(width.items()):
        if len(s) != 1:
            wmulti.append((c, s))
        elif wruns and wruns[-1][1] == c - 1 and wruns[-1][2] == ord(s) - c:
            wruns[-1][1] = c
        else:
            wruns.append([c, c, ord(s) - c])
    emit_rows("uc_width", "struct uc_delta",
              [f"{{0x{a:X},0x{b:X},{d},1}}," for a, b, d in wruns], 4)
    emit_rows("uc_width_multi", "struct uc_map",
              [f"{{0x{c:X},{cp_list(s, 3)}}}," for c, s in wmulti], 3)
    emit_rows("uc_ligature", "struct uc_map",
              [f"{{0x{ord(c):X},{cp_list(s, 3)}}}," for c, s in sorted(ligatures.items())], 3)
    emit_rows("uc_cp1252", "uint16_t", [f"0x{c:X}," for c in cp1252], 8)
    emit_rows("uc_entity", "struct uc_entity",
              [f"{{\"{k}\",{c_string(v)}}}," for k, v in ents], 3)


if __name__ == "__main__":
    main()
