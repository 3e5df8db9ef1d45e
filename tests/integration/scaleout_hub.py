"""The fake Hub that the scale-out tests fingerprint: a dozen repositories of two generated
families (tests/tools/gen_family.py, seeds 11 and 12), one of them twice under another name
(a mirror: the same files, so the same cache keys, written by two jobs at once), a derivative
of one of them that is not in the list, and an upload unrelated to all of them."""
import os
import sys

from ckstest import ROOT, generate

sys.path.insert(0, os.path.join(ROOT, "tests/fakehub"))
import hubrepo  # noqa: E402

# List order matters to test_slurm.py: with 4 shares, source i goes to share i mod 4, so
# share 2 (task 1) holds the mirror (1), the source it slows down (5) and one more (9).
LIST = [
    "s11/llama-base", "mirror/llama-base", "s11/glm-base", "s11/llama-independent",
    "s11/glm-independent", "s11/llama-layers_removed", "s11/llama-base_cls", "s11/glm-base_cls",
    "s11/llama-independent_cls", "s11/glm-independent_cls", "s11/llama-reshard", "s11/glm-reshard",
]
DERIVATIVE = "s11/llama-finetune"   # a fine-tune of s11/llama-base: verify exits 1
UNRELATED = "s12/llama-base"        # another initialisation: verify exits 0


def build(tmp):
    """Generate the families and publish them; the store folder, or None after a FAIL line."""
    store = os.path.join(tmp, "store")
    for seed in (11, 12):
        fam = os.path.join(tmp, "fam%d" % seed)
        if not generate("gen_family.py", fam, "--seed", str(seed), timeout=120):
            return None
        for style in ("llama", "glm"):
            for tag in sorted(os.listdir(os.path.join(fam, style))):
                d = os.path.join(fam, style, tag)
                files = {n: os.path.join(d, n) for n in os.listdir(d)}
                hubrepo.add_repo(store, "s%d/%s-%s" % (seed, style, tag), files)
                if seed == 11 and style == "llama" and tag == "base":
                    hubrepo.add_repo(store, "mirror/llama-base", files)
    return store


def write_list(path, sources=LIST):
    with open(path, "w") as f:
        f.write("# bases to fingerprint, one per line\n\n" + "\n".join(sources) + "\n")
    return path
