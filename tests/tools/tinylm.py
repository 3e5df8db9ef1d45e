"""A small Llama-style transformer in numpy, with hand-written backward passes and AdamW, for the
verdict calibration corpus (tests/tools/gen_corpus.py): relations that arise from training
(later checkpoints, fine-tunes, re-runs, seed twins, LoRA adapters, classification heads,
distilled students, upcycled MoE) are made by training, not by hand-set correlations.

Architecture (as LlamaForCausalLM stores it, without RoPE, which changes no weight's shape or
role): token embedding; per layer RMSNorm -> grouped-query attention (q/k/v/o) -> residual,
RMSNorm -> SwiGLU MLP (gate/up/down) or a top-k routed mixture of SwiGLU experts -> residual;
final RMSNorm; untied lm_head. Parameters use the Hugging Face names, float32.

The synthetic language (Language) has latent structure a model must learn: each token belongs to
one of a few classes, classes follow a Markov chain, each sequence has a topic that boosts a
topic-specific set of tokens (only attention over the context can infer it), and token
frequencies are Zipfian (rare tokens are barely trained, as in real vocabularies). Domains
(other transition matrices, topic weights) make fine-tuning data and tasks.

Nothing here is used by the tool; it is test infrastructure, written for this corpus.
"""
import numpy as np

EPS = 1e-5


class Config:
    def __init__(self, vocab=1024, hidden=64, layers=4, heads=4, kv_heads=2, head_dim=16, inter=128,
                 experts=0, top_k=2):
        self.vocab, self.hidden, self.layers = vocab, hidden, layers
        self.heads, self.kv_heads, self.head_dim, self.inter = heads, kv_heads, head_dim, inter
        self.experts, self.top_k = experts, top_k

    def copy(self, **kw):
        c = Config(self.vocab, self.hidden, self.layers, self.heads, self.kv_heads, self.head_dim, self.inter,
                   self.experts, self.top_k)
        for k, v in kw.items():
            setattr(c, k, v)
        return c


def L(l, rest):
    return f"model.layers.{l}.{rest}"


def expert_name(l, e, which):
    """Mixtral's layout: w1 = gate, w3 = up, w2 = down."""
    return L(l, f"block_sparse_moe.experts.{e}.{ {'gate': 'w1', 'up': 'w3', 'down': 'w2'}[which] }.weight")


def init_params(cfg, rng, std=0.02):
    """Hugging Face's LlamaPreTrainedModel._init_weights: normal(0, initializer_range) for every
    linear and embedding matrix, ones for the RMSNorm gains."""
    d, q, kv = cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    f32 = np.float32

    def n(*shape):
        return (rng.standard_normal(shape) * std).astype(f32)

    p = {"model.embed_tokens.weight": n(cfg.vocab, d)}
    for l in range(cfg.layers):
        p[L(l, "input_layernorm.weight")] = np.ones(d, f32)
        p[L(l, "self_attn.q_proj.weight")] = n(q, d)
        p[L(l, "self_attn.k_proj.weight")] = n(kv, d)
        p[L(l, "self_attn.v_proj.weight")] = n(kv, d)
        p[L(l, "self_attn.o_proj.weight")] = n(d, q)
        p[L(l, "post_attention_layernorm.weight")] = np.ones(d, f32)
        if cfg.experts:
            p[L(l, "block_sparse_moe.gate.weight")] = n(cfg.experts, d)
            for e in range(cfg.experts):
                p[expert_name(l, e, "gate")] = n(cfg.inter, d)
                p[expert_name(l, e, "up")] = n(cfg.inter, d)
                p[expert_name(l, e, "down")] = n(d, cfg.inter)
        else:
            p[L(l, "mlp.gate_proj.weight")] = n(cfg.inter, d)
            p[L(l, "mlp.up_proj.weight")] = n(cfg.inter, d)
            p[L(l, "mlp.down_proj.weight")] = n(d, cfg.inter)
    p["model.norm.weight"] = np.ones(d, f32)
    p["lm_head.weight"] = n(cfg.vocab, d)
    return p


# ---------------------------------------------------------------- blocks

def rms_fwd(x, g):
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + EPS)
    xn = x * r
    return xn * g, (xn, r)


def rms_bwd(dy, g, cache):
    xn, r = cache
    dg = (dy * xn).reshape(-1, xn.shape[-1]).sum(0)
    dxn = dy * g
    dx = r * (dxn - xn * (dxn * xn).mean(-1, keepdims=True))
    return dx, dg


def silu(x):
    return x / (1.0 + np.exp(-x))


def swiglu_fwd(h, Wg, Wu, Wd):
    gt, up = h @ Wg.T, h @ Wu.T
    sg = 1.0 / (1.0 + np.exp(-gt))
    act = gt * sg * up
    return act @ Wd.T, (h, gt, sg, up, act)


def swiglu_bwd(dy, Wg, Wu, Wd, cache, weights=True):
    h, gt, sg, up, act = cache
    dWd = dy.T @ act if weights else None
    dact = dy @ Wd
    dup = dact * gt * sg
    dgt = dact * up * (sg * (1.0 + gt * (1.0 - sg)))
    dWg, dWu = (dgt.T @ h, dup.T @ h) if weights else (None, None)
    dh = dgt @ Wg + dup @ Wu
    return dh, dWg, dWu, dWd


def attn_fwd(h, Wq, Wk, Wv, Wo, cfg):
    B, T, d = h.shape
    H, KV, hd = cfg.heads, cfg.kv_heads, cfg.head_dim
    rep = H // KV
    h2 = h.reshape(B * T, d)
    q = (h2 @ Wq.T).reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    k = (h2 @ Wk.T).reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    v = (h2 @ Wv.T).reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    kr, vr = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    scale = np.float32(1.0 / np.sqrt(hd))
    s = (q @ kr.transpose(0, 1, 3, 2)) * scale
    s = s + causal_mask(T)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    a = p @ vr
    ac = a.transpose(0, 2, 1, 3).reshape(B * T, H * hd)
    out = (ac @ Wo.T).reshape(B, T, d)
    return out, (h2, q, kr, vr, p, ac, scale)


def attn_bwd(dout, Wq, Wk, Wv, Wo, cfg, cache, weights=(True, True, True, True)):
    h2, q, kr, vr, p, ac, scale = cache
    B, H, T, hd = q.shape
    KV = cfg.kv_heads
    rep = H // KV
    d = h2.shape[1]
    dout2 = dout.reshape(B * T, d)
    dWo = dout2.T @ ac if weights[3] else None
    da = (dout2 @ Wo).reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    dp = da @ vr.transpose(0, 1, 3, 2)
    dvr = p.transpose(0, 1, 3, 2) @ da
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = (ds @ kr) * scale
    dkr = (ds.transpose(0, 1, 3, 2) @ q) * scale
    dk = dkr.reshape(B, KV, rep, T, hd).sum(2)
    dv = dvr.reshape(B, KV, rep, T, hd).sum(2)
    dq2 = dq.transpose(0, 2, 1, 3).reshape(B * T, H * hd)
    dk2 = dk.transpose(0, 2, 1, 3).reshape(B * T, KV * hd)
    dv2 = dv.transpose(0, 2, 1, 3).reshape(B * T, KV * hd)
    dWq, dWk, dWv = (dq2.T @ h2 if weights[0] else None, dk2.T @ h2 if weights[1] else None,
                     dv2.T @ h2 if weights[2] else None)
    dh = (dq2 @ Wq + dk2 @ Wk + dv2 @ Wv).reshape(B, T, d)
    return dh, dWq, dWk, dWv, dWo


_MASKS = {}


def causal_mask(T):
    if T not in _MASKS:
        _MASKS[T] = np.triu(np.full((T, T), -1e9, np.float32), 1)
    return _MASKS[T]


def moe_fwd(h2, p, l, cfg):
    """Mixtral's routing: softmax over the top-k router logits, a weighted sum of those experts."""
    logits = h2 @ p[L(l, "block_sparse_moe.gate.weight")].T
    top = np.argsort(-logits, axis=1)[:, :cfg.top_k]
    tl = np.take_along_axis(logits, top, 1)
    w = np.exp(tl - tl.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    out = np.zeros_like(h2)
    caches = []
    for e in range(cfg.experts):
        rows, slot = np.nonzero(top == e)
        if len(rows) == 0:
            caches.append(None)
            continue
        y, c = swiglu_fwd(h2[rows], p[expert_name(l, e, "gate")], p[expert_name(l, e, "up")],
                          p[expert_name(l, e, "down")])
        out[rows] += w[rows, slot][:, None] * y
        caches.append((rows, slot, y, c))
    return out, (h2, top, w, caches)


def moe_bwd(dout, p, l, cfg, cache, grads):
    h2, top, w, caches = cache
    dh = np.zeros_like(h2)
    dw = np.zeros_like(w)
    for e in range(cfg.experts):
        names = [expert_name(l, e, k) for k in ("gate", "up", "down")]
        if caches[e] is None:
            for nm in names:
                grads[nm] = np.zeros_like(p[nm])
            continue
        rows, slot, y, c = caches[e]
        dy = w[rows, slot][:, None] * dout[rows]
        dw[rows, slot] = (dout[rows] * y).sum(1)
        dhx, dWg, dWu, dWd = swiglu_bwd(dy, *(p[nm] for nm in names), c)
        np.add.at(dh, rows, dhx)
        grads[names[0]], grads[names[1]], grads[names[2]] = dWg, dWu, dWd
    dtl = w * (dw - (dw * w).sum(1, keepdims=True))
    dlogits = np.zeros((h2.shape[0], cfg.experts), np.float32)
    np.put_along_axis(dlogits, top, dtl, 1)
    Wr = p[L(l, "block_sparse_moe.gate.weight")]
    grads[L(l, "block_sparse_moe.gate.weight")] = dlogits.T @ h2
    dh += dlogits @ Wr
    return dh


# ---------------------------------------------------------------- the model

def forward(p, cfg, tokens):
    """Final normed hidden states [B, T, d] and the caches backward() needs."""
    B, T = tokens.shape
    d = cfg.hidden
    x = p["model.embed_tokens.weight"][tokens]
    caches = []
    for l in range(cfg.layers):
        n1, c1 = rms_fwd(x, p[L(l, "input_layernorm.weight")])
        a, ca = attn_fwd(n1, p[L(l, "self_attn.q_proj.weight")], p[L(l, "self_attn.k_proj.weight")],
                         p[L(l, "self_attn.v_proj.weight")], p[L(l, "self_attn.o_proj.weight")], cfg)
        x = x + a
        n2, c2 = rms_fwd(x, p[L(l, "post_attention_layernorm.weight")])
        if cfg.experts:
            m, cm = moe_fwd(n2.reshape(B * T, d), p, l, cfg)
        else:
            m, cm = swiglu_fwd(n2.reshape(B * T, d), p[L(l, "mlp.gate_proj.weight")],
                               p[L(l, "mlp.up_proj.weight")], p[L(l, "mlp.down_proj.weight")])
        x = x + m.reshape(B, T, d)
        caches.append((c1, ca, c2, cm))
    nf, cf = rms_fwd(x, p["model.norm.weight"])
    return nf, (tokens, caches, cf)


def backward(p, cfg, dnf, cache, need=None):
    """Gradients given d loss / d final normed hidden: of every parameter, or (need = a set of names)
    at least of those (weight gradients of frozen matrices are skipped where that saves work)."""
    tokens, caches, cf = cache
    B, T = tokens.shape
    d = cfg.hidden
    g = {}
    dx, g["model.norm.weight"] = rms_bwd(dnf, p["model.norm.weight"], cf)
    for l in reversed(range(cfg.layers)):
        c1, ca, c2, cm = caches[l]
        dm = dx.reshape(B * T, d)
        if cfg.experts:
            dn2 = moe_bwd(dm, p, l, cfg, cm, g)
        else:
            names = [L(l, f"mlp.{m}.weight") for m in ("gate_proj", "up_proj", "down_proj")]
            dn2, g[names[0]], g[names[1]], g[names[2]] = swiglu_bwd(
                dm, *(p[n] for n in names), cm, weights=need is None or any(n in need for n in names))
        dxn, g[L(l, "post_attention_layernorm.weight")] = rms_bwd(dn2.reshape(B, T, d),
                                                                  p[L(l, "post_attention_layernorm.weight")], c2)
        dx = dx + dxn
        names = [L(l, f"self_attn.{m}_proj.weight") for m in "qkvo"]
        dn1, g[names[0]], g[names[1]], g[names[2]], g[names[3]] = attn_bwd(
            dx, *(p[n] for n in names), cfg, ca, weights=tuple(need is None or n in need for n in names))
        dxn, g[L(l, "input_layernorm.weight")] = rms_bwd(dn1, p[L(l, "input_layernorm.weight")], c1)
        dx = dx + dxn
    if need is None or "model.embed_tokens.weight" in need:
        g["model.embed_tokens.weight"] = embed_grad(tokens, dx.reshape(-1, d), p["model.embed_tokens.weight"].shape)
    return g


def embed_grad(tokens, dx, shape):
    """Sum the rows of dx by token (np.add.at is ~10x slower at these sizes)."""
    flat = tokens.reshape(-1)
    order = np.argsort(flat, kind="stable")
    ids, starts = np.unique(flat[order], return_index=True)
    dE = np.zeros(shape, dx.dtype)
    dE[ids] = np.add.reduceat(dx[order], starts, axis=0)
    return dE


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------- objectives

def lm_objective(p, cfg, batch):
    """Next-token cross-entropy: (loss, d loss / d final normed hidden, lm_head gradient)."""
    tokens = batch["tokens"]
    nf, cache = forward(p, cfg, tokens[:, :-1])
    B, T, d = nf.shape
    W = p["lm_head.weight"]
    h = nf.reshape(B * T, d)
    pr = softmax(h @ W.T)
    tgt = tokens[:, 1:].reshape(-1)
    n = len(tgt)
    loss = float(-np.log(pr[np.arange(n), tgt] + 1e-12).mean())
    pr[np.arange(n), tgt] -= 1.0
    pr /= n
    return loss, (pr @ W).reshape(B, T, d), {"lm_head.weight": pr.T @ h}, cache


def kd_objective(p, cfg, batch, geometry=0.0):
    """Distillation: KL(teacher || student) on next-token distributions; with geometry > 0 also the
    relational loss on final hidden states (the token x token cosine matrix of the student matched
    to the teacher's, which fixes geometry but no basis)."""
    tokens = batch["tokens"]
    nf, cache = forward(p, cfg, tokens[:, :-1])
    B, T, d = nf.shape
    W = p["lm_head.weight"]
    h = nf.reshape(B * T, d)
    ps = softmax(h @ W.T)
    pt = batch["teacher_probs"]
    n = h.shape[0]
    loss = float((pt * (np.log(pt + 1e-12) - np.log(ps + 1e-12))).sum(1).mean())
    dz = (ps - pt) / n
    dh = dz @ W
    if geometry > 0:
        ht = batch["teacher_hidden"]
        nrm = np.linalg.norm(h, axis=1, keepdims=True) + 1e-6
        hn = h / nrm
        tn = ht / (np.linalg.norm(ht, axis=1, keepdims=True) + 1e-6)
        diff = hn @ hn.T - tn @ tn.T
        loss += geometry * float((diff * diff).mean())
        dS = geometry * 2.0 * diff / diff.size
        dhn = (dS + dS.T) @ hn
        dh += (dhn - hn * (hn * dhn).sum(1, keepdims=True)) / nrm
    return loss, dh.reshape(B, T, d), {"lm_head.weight": dz.T @ h}, cache


def cls_objective(p, cfg, batch, head):
    """Sequence classification on the last token's final hidden state (as LlamaForSequenceClassification
    and GPT2ForSequenceClassification do): head = (weight name, bias name or None)."""
    tokens, labels = batch["tokens"], batch["labels"]
    nf, cache = forward(p, cfg, tokens)
    B, T, d = nf.shape
    wname, bname = head
    last = nf[:, -1, :]
    z = last @ p[wname].T
    if bname:
        z = z + p[bname]
    pr = softmax(z)
    loss = float(-np.log(pr[np.arange(B), labels] + 1e-12).mean())
    pr[np.arange(B), labels] -= 1.0
    pr /= B
    dnf = np.zeros_like(nf)
    dnf[:, -1, :] = pr @ p[wname]
    extra = {wname: pr.T @ last}
    if bname:
        extra[bname] = pr.sum(0)
    return loss, dnf, extra, cache


# ---------------------------------------------------------------- training

class AdamW:
    def __init__(self, lr, wd=0.0, b1=0.9, b2=0.95, eps=1e-8):
        self.lr, self.wd, self.b1, self.b2, self.eps = lr, wd, b1, b2, eps
        self.m, self.v, self.t = {}, {}, 0

    def step(self, params, grads, names, lr_scale=1.0):
        self.t += 1
        lr = self.lr * lr_scale
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for k in names:
            gr = grads[k]
            m = self.m.get(k)
            if m is None:
                m = self.m[k] = np.zeros_like(gr)
                self.v[k] = np.zeros_like(gr)
            v = self.v[k]
            m *= self.b1
            m += (1 - self.b1) * gr
            v *= self.b2
            v += (1 - self.b2) * gr * gr
            upd = (m / c1) / (np.sqrt(v / c2) + self.eps)
            if self.wd and params[k].ndim == 2:
                params[k] *= np.float32(1 - lr * self.wd)
            params[k] -= np.float32(lr) * upd.astype(np.float32)


def lora_targets(cfg, modules=("q_proj", "v_proj")):
    return [L(l, f"self_attn.{m}.weight") for l in range(cfg.layers) for m in modules]


def lora_init(cfg, targets, base, r, rng):
    """PEFT's LoRA init: A kaiming-uniform (a = sqrt(5): bound 1/sqrt(in)), B zero."""
    ad = {}
    for t in targets:
        out_dim, in_dim = base[t].shape
        bound = 1.0 / np.sqrt(in_dim)
        ad[t + ":A"] = rng.uniform(-bound, bound, (r, in_dim)).astype(np.float32)
        ad[t + ":B"] = np.zeros((out_dim, r), np.float32)
    return ad


def linear_init(out_dim, in_dim, rng, bias=True):
    """torch.nn.Linear's default init: weight and bias uniform(+-1/sqrt(in))."""
    bound = 1.0 / np.sqrt(in_dim)
    w = rng.uniform(-bound, bound, (out_dim, in_dim)).astype(np.float32)
    b = rng.uniform(-bound, bound, out_dim).astype(np.float32) if bias else None
    return w, b


def train(params, cfg, batches, steps, lr, objective, trainable=None, lora=None, lora_scale=1.0,
          wd=0.0, warmup=0, decay=True, on_step=None):
    """Train in place. batches(step) -> batch dict; objective(p, cfg, batch) -> (loss, dnf, extra
    grads, cache). trainable: parameter names to update (None = every parameter). lora: adapter
    dict {target+":A", target+":B"} trained instead of its targets (which stay frozen).
    Returns the losses; on_step(step, params, lora) lets a caller save checkpoints."""
    opt = AdamW(lr, wd)
    losses = []
    for s in range(steps):
        if lora is not None:
            eff = dict(params)
            targets = sorted({k.rsplit(":", 1)[0] for k in lora})
            for t in targets:
                eff[t] = params[t] + np.float32(lora_scale) * (lora[t + ":B"] @ lora[t + ":A"])
        else:
            eff = params
        batch = batches(s)
        loss, dnf, extra, cache = objective(eff, cfg, batch)
        need_body = lora is not None or trainable is None or any(
            not k.startswith("lm_head") and k not in extra for k in trainable)
        need = None
        if lora is not None:
            need = set(targets)
        elif trainable is not None:
            need = set(trainable)
        g = backward(eff, cfg, dnf, cache, need) if need_body else {}
        g.update(extra)
        if warmup and s < warmup:
            scale = (s + 1) / warmup
        elif decay:
            scale = 0.5 * (1 + np.cos(np.pi * (s - warmup) / max(steps - warmup, 1)))
            scale = 0.1 + 0.9 * scale
        else:
            scale = 1.0
        if lora is not None:
            lg = {}
            for t in targets:
                gw = g[t]
                lg[t + ":A"] = np.float32(lora_scale) * (lora[t + ":B"].T @ gw)
                lg[t + ":B"] = np.float32(lora_scale) * (gw @ lora[t + ":A"].T)
            names = list(lora)
            both = dict(lora)
            for k in (trainable or []):
                lg[k] = g[k]
                both[k] = params[k]
            opt.step(both, lg, names + list(trainable or []), scale)
            for k in (trainable or []):
                params[k] = both[k]
        else:
            names = list(params) if trainable is None else list(trainable)
            opt.step(params, g, names, scale)
        losses.append(loss)
        if on_step:
            on_step(s + 1, params, lora)
    return losses


# ---------------------------------------------------------------- the synthetic language

class Language:
    """Tokens in classes, a class Markov chain, a per-sequence topic boosting its own tokens,
    Zipfian frequencies. domain(rng) draws another transition matrix / topic weighting over the
    same tokens (for fine-tuning data and tasks)."""

    def __init__(self, rng, vocab_ids, n_classes=16, n_topics=8, zipf=1.1):
        self.ids = np.asarray(vocab_ids)
        n = len(self.ids)
        self.n_classes, self.n_topics = n_classes, n_topics
        self.cls = rng.integers(0, n_classes, n)
        ranks = rng.permutation(n) + 1
        self.freq = ranks ** -zipf
        self.topic_boost = np.ones((n_topics, n))
        for t in range(n_topics):
            pick = rng.random(n) < 0.15
            self.topic_boost[t, pick] = 12.0
        self.trans = rng.dirichlet(np.full(n_classes, 0.3), n_classes)
        self._tables()

    def _tables(self):
        n = len(self.ids)
        self.emit = np.zeros((self.n_topics, self.n_classes, n))
        for t in range(self.n_topics):
            for c in range(self.n_classes):
                w = self.freq * self.topic_boost[t] * (self.cls == c)
                self.emit[t, c] = w / w.sum()
        self.emit_cdf = np.cumsum(self.emit, axis=2)
        self.trans_cdf = np.cumsum(self.trans, axis=1)

    def domain(self, rng, strength=1.0):
        """The same tokens and classes with other transitions and topic boosts (a new domain)."""
        other = Language.__new__(Language)
        other.ids, other.cls, other.freq = self.ids, self.cls, self.freq
        other.n_classes, other.n_topics = self.n_classes, self.n_topics
        fresh = rng.dirichlet(np.full(self.n_classes, 0.3), self.n_classes)
        other.trans = (1 - strength) * self.trans + strength * fresh
        other.topic_boost = self.topic_boost.copy()
        n = len(self.ids)
        for t in range(self.n_topics):
            if rng.random() < strength:
                other.topic_boost[t] = 1.0
                other.topic_boost[t, rng.random(n) < 0.15] = 12.0
        other._tables()
        return other

    def sample(self, rng, n_seq, T):
        """(token ids [n_seq, T], topics [n_seq])."""
        topics = rng.integers(0, self.n_topics, n_seq)
        c = rng.integers(0, self.n_classes, n_seq)
        out = np.zeros((n_seq, T), np.int64)
        for t in range(T):
            u = rng.random(n_seq)
            idx = (self.emit_cdf[topics, c] < u[:, None]).sum(1)
            idx = np.minimum(idx, len(self.ids) - 1)
            out[:, t] = self.ids[idx]
            u = rng.random(n_seq)
            c = np.minimum((self.trans_cdf[c] < u[:, None]).sum(1), self.n_classes - 1)
        return out, topics


def batcher(data, rng, batch_size, **extra):
    """Mini-batches drawn from a fixed data set in an order set by rng (the data-order seed)."""
    tokens = data[0] if isinstance(data, tuple) else data
    n = len(tokens)
    order = []

    def get(step):
        nonlocal order
        if len(order) < batch_size:
            order = list(rng.permutation(n)) + list(order)
        idx = [order.pop() for _ in range(batch_size)]
        b = {"tokens": tokens[idx]}
        for k, v in extra.items():
            b[k] = v[idx]
        return b
    return get


def lm_loss(p, cfg, tokens, chunk=64):
    """Mean next-token cross-entropy over a data set (no gradients)."""
    tot, n = 0.0, 0
    for i in range(0, len(tokens), chunk):
        t = tokens[i:i + chunk]
        nf, _ = forward(p, cfg, t[:, :-1])
        z = nf.reshape(-1, cfg.hidden) @ p["lm_head.weight"].T
        pr = softmax(z)
        tgt = t[:, 1:].reshape(-1)
        tot += float(-np.log(pr[np.arange(len(tgt)), tgt] + 1e-12).sum())
        n += len(tgt)
    return tot / n
