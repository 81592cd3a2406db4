"""Import cycles between source files of src/ (a `pub use` re-export is not a dependency): .ci/run fails on any."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else "src"
files = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith(".rs"):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)[:-3]
            parts = rel.split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            files[tuple(parts)] = p
def resolve(mod, segs):
    # longest prefix of segs that names a file
    for n in range(len(segs), 0, -1):
        if tuple(segs[:n]) in files:
            return tuple(segs[:n])
    return None
edges = {k: set() for k in files}
for mod, p in files.items():
    text = open(p).read()
    text = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text, flags=re.S)
    for m in re.finditer(r"^\s*(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text, flags=re.M):
        if m.group(1):
            continue
        path = m.group(2).strip()
        heads = []
        if "{" in path:
            pre, rest = path.split("{", 1)
            for item in rest.rstrip("}").split(","):
                heads.append(pre + item.strip())
        else:
            heads.append(path)
        for h in heads:
            segs = [s for s in h.split("::") if s and s != "self"]
            if not segs: continue
            if segs[0] == "crate":
                base = []; segs = segs[1:]
            elif segs[0] == "super":
                base = list(mod)
                # a file module's parent
                while segs and segs[0] == "super":
                    base = base[:-1]; segs = segs[1:]
            else:
                continue
            t = resolve(mod, base + segs)
            if t and t != mod and not (len(t) < len(mod) and mod[:len(t)] == t and False):
                edges[mod].add(t)
# find cycles
seen = set(); stack = []; onstack = set(); cycles = []
def dfs(u):
    seen.add(u); stack.append(u); onstack.add(u)
    for v in edges[u]:
        if v in onstack:
            cycles.append(stack[stack.index(v):] + [v])
        elif v not in seen:
            dfs(v)
    stack.pop(); onstack.discard(u)
for k in files:
    if k not in seen: dfs(k)
for c in cycles:
    print(" -> ".join("/".join(x) or "lib" for x in c))
print(len(cycles), "import cycles between files of", root)
sys.exit(1 if cycles else 0)
