"""Rewrites each ``kernel<<<grid, block, smem, stream>>>(args)`` of a .cu file as
``::emu::launch(dim3(grid), dim3(block), [&]() { kernel(args); })`` (see run.sh).

Usage: python3 convert.py IN.cu OUT.cpp
"""

import sys


def split_top(s):
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{<":
            depth += 1
        if ch in ")]}>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


src = open(sys.argv[1]).read()
out, i = [], 0
while True:
    j = src.find("<<<", i)
    if j < 0:
        out.append(src[i:])
        break
    # kernel name: back from j over identifiers, ::, and a balanced <...>
    k = j
    while k > 0 and src[k - 1].isspace():  # `name<...>\n    <<<...`
        k -= 1
    j_name_end = k
    depth = 0
    while k > 0:
        c = src[k - 1]
        if c == ">":
            depth += 1
        elif c == "<":
            depth -= 1
        elif depth == 0 and not (c.isalnum() or c in "_:"):
            break
        k -= 1
    name = src[k:j_name_end]
    e = src.find(">>>", j)
    cfg = split_top(src[j + 3 : e])
    # args: balanced parens after >>>
    assert src[e + 3] == "(", src[e : e + 20]
    depth, m = 0, e + 3
    while True:
        if src[m] == "(":
            depth += 1
        elif src[m] == ")":
            depth -= 1
            if depth == 0:
                break
        m += 1
    args = src[e + 4 : m]
    out.append(src[i:k])
    out.append(f"::emu::launch(dim3({cfg[0]}), dim3({cfg[1]}), [&]() {{ {name}({args}); }})")
    i = m + 1
open(sys.argv[2], "w").write("".join(out))
