/*
 * Tensor roles. The name decides the role (every family below keeps a stable naming scheme
 * across sizes); config.json decides depth, which is what names cannot tell apart: GLM-4.5
 * stores its multi-token-prediction block as one more `model.layers.N`, and comparing it
 * as a decoder layer would pair unrelated tensors (research/peers.md §5, §7.5).
 */
#include "ckptscope/roles.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SEGMENTS 32
#define MAX_REST 256
#define MAX_WIDTH (INT64_C(1) << 40)

typedef struct seg {
    const char *p;
    size_t len;
} seg;

static bool seg_is(seg s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.p, lit, n) == 0;
}

/* A decimal index without sign, bounded; -1 when the segment is not one. */
static long seg_index(seg s, long max)
{
    long v = 0;
    if (s.len == 0 || s.len > 9)
        return -1;
    for (size_t i = 0; i < s.len; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return -1;
        v = v * 10 + (s.p[i] - '0');
    }
    return v <= max ? v : -1;
}

static size_t split_name(const char *name, seg *segs, size_t max)
{
    size_t n = 0;
    const char *p = name;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (n == max)
            return 0; /* more segments than any real name: leave it to the fallback */
        segs[n].p = p;
        segs[n].len = len;
        n++;
        if (!dot)
            break;
        p = dot + 1;
    }
    return n;
}

/* Join segments [from, to) with dots; false when it would not fit. */
static bool join_segs(const seg *segs, size_t from, size_t to, char *out, size_t cap)
{
    size_t k = 0;
    for (size_t i = from; i < to; i++) {
        if (k + segs[i].len + 2 > cap)
            return false;
        if (i > from)
            out[k++] = '.';
        memcpy(out + k, segs[i].p, segs[i].len);
        k += segs[i].len;
    }
    out[k] = '\0';
    return true;
}

/* ---- per-layer names ---- */

enum fuse_kind { FUSE_NONE, FUSE_QKV_THIRDS, FUSE_QKV_HEADS, FUSE_GATE_UP };

typedef struct layer_rule {
    const char *rest;       /* the module path after "layers.N." */
    cks_role role;
    bool transposed;
    enum fuse_kind fuse;
} layer_rule;

static const layer_rule layer_rules[] = {
    /* Llama, Mistral, Qwen, DeepSeek, GLM-4.5, Solar-Open, Phi-3.5-MoE, Mixtral */
    {"input_layernorm", CKS_ROLE_ATTN_NORM, false, FUSE_NONE},
    {"post_attention_layernorm", CKS_ROLE_FFN_NORM, false, FUSE_NONE},
    {"pre_feedforward_layernorm", CKS_ROLE_FFN_NORM, false, FUSE_NONE},
    {"post_feedforward_layernorm", CKS_ROLE_POST_FFN_NORM, false, FUSE_NONE},
    {"self_attn.q_proj", CKS_ROLE_Q, false, FUSE_NONE},
    {"self_attn.k_proj", CKS_ROLE_K, false, FUSE_NONE},
    {"self_attn.v_proj", CKS_ROLE_V, false, FUSE_NONE},
    {"self_attn.o_proj", CKS_ROLE_O, false, FUSE_NONE},
    {"self_attn.qkv_proj", CKS_ROLE_QKV, false, FUSE_QKV_HEADS},
    {"self_attn.q_norm", CKS_ROLE_Q_NORM, false, FUSE_NONE},
    {"self_attn.k_norm", CKS_ROLE_K_NORM, false, FUSE_NONE},
    {"self_attn.q_layernorm", CKS_ROLE_Q_NORM, false, FUSE_NONE},
    {"self_attn.k_layernorm", CKS_ROLE_K_NORM, false, FUSE_NONE},
    {"self_attn.q_a_proj", CKS_ROLE_Q_A, false, FUSE_NONE},
    {"self_attn.q_a_layernorm", CKS_ROLE_Q_A_NORM, false, FUSE_NONE},
    {"self_attn.q_b_proj", CKS_ROLE_Q_B, false, FUSE_NONE},
    {"self_attn.kv_a_proj_with_mqa", CKS_ROLE_KV_A, false, FUSE_NONE},
    {"self_attn.kv_a_layernorm", CKS_ROLE_KV_A_NORM, false, FUSE_NONE},
    {"self_attn.kv_b_proj", CKS_ROLE_KV_B, false, FUSE_NONE},
    {"mlp.gate_proj", CKS_ROLE_DENSE_GATE, false, FUSE_NONE},
    {"mlp.up_proj", CKS_ROLE_DENSE_UP, false, FUSE_NONE},
    {"mlp.down_proj", CKS_ROLE_DENSE_DOWN, false, FUSE_NONE},
    {"mlp.gate_up_proj", CKS_ROLE_DENSE_GATE_UP, false, FUSE_GATE_UP},
    {"mlp.gate", CKS_ROLE_ROUTER, false, FUSE_NONE},
    {"mlp.router", CKS_ROLE_ROUTER, false, FUSE_NONE},
    {"block_sparse_moe.gate", CKS_ROLE_ROUTER, false, FUSE_NONE},
    {"mlp.shared_experts.gate_proj", CKS_ROLE_SHARED_GATE, false, FUSE_NONE},
    {"mlp.shared_experts.up_proj", CKS_ROLE_SHARED_UP, false, FUSE_NONE},
    {"mlp.shared_experts.down_proj", CKS_ROLE_SHARED_DOWN, false, FUSE_NONE},
    {"mlp.shared_expert.gate_proj", CKS_ROLE_SHARED_GATE, false, FUSE_NONE},
    {"mlp.shared_expert.up_proj", CKS_ROLE_SHARED_UP, false, FUSE_NONE},
    {"mlp.shared_expert.down_proj", CKS_ROLE_SHARED_DOWN, false, FUSE_NONE},
    {"mlp.shared_expert_gate", CKS_ROLE_SHARED_EXPERT_GATE, false, FUSE_NONE},
    /* GPT-2: Conv1D stores [in, out] */
    {"ln_1", CKS_ROLE_ATTN_NORM, false, FUSE_NONE},
    {"ln_2", CKS_ROLE_FFN_NORM, false, FUSE_NONE},
    {"attn.c_attn", CKS_ROLE_QKV, true, FUSE_QKV_THIRDS},
    {"attn.c_proj", CKS_ROLE_O, true, FUSE_NONE},
    {"mlp.c_fc", CKS_ROLE_DENSE_UP, true, FUSE_NONE},
    {"mlp.c_proj", CKS_ROLE_DENSE_DOWN, true, FUSE_NONE},
    /* Meta's original Llama checkpoints (consolidated.*.pth converted as-is) */
    {"attention_norm", CKS_ROLE_ATTN_NORM, false, FUSE_NONE},
    {"ffn_norm", CKS_ROLE_FFN_NORM, false, FUSE_NONE},
    {"attention.wq", CKS_ROLE_Q, false, FUSE_NONE},
    {"attention.wk", CKS_ROLE_K, false, FUSE_NONE},
    {"attention.wv", CKS_ROLE_V, false, FUSE_NONE},
    {"attention.wo", CKS_ROLE_O, false, FUSE_NONE},
    {"feed_forward.w1", CKS_ROLE_DENSE_GATE, false, FUSE_NONE},
    {"feed_forward.w3", CKS_ROLE_DENSE_UP, false, FUSE_NONE},
    {"feed_forward.w2", CKS_ROLE_DENSE_DOWN, false, FUSE_NONE},
    /* DistilBERT (post-LN like BERT) */
    {"attention.q_lin", CKS_ROLE_Q, false, FUSE_NONE},
    {"attention.k_lin", CKS_ROLE_K, false, FUSE_NONE},
    {"attention.v_lin", CKS_ROLE_V, false, FUSE_NONE},
    {"attention.out_lin", CKS_ROLE_O, false, FUSE_NONE},
    {"sa_layer_norm", CKS_ROLE_ATTN_NORM, false, FUSE_NONE},
    {"ffn.lin1", CKS_ROLE_DENSE_UP, false, FUSE_NONE},
    {"ffn.lin2", CKS_ROLE_DENSE_DOWN, false, FUSE_NONE},
    {"output_layer_norm", CKS_ROLE_FFN_NORM, false, FUSE_NONE},
    /* BERT (post-LN: each LayerNorm closes its sub-block) */
    {"attention.self.query", CKS_ROLE_Q, false, FUSE_NONE},
    {"attention.self.key", CKS_ROLE_K, false, FUSE_NONE},
    {"attention.self.value", CKS_ROLE_V, false, FUSE_NONE},
    {"attention.output.dense", CKS_ROLE_O, false, FUSE_NONE},
    {"attention.output.LayerNorm", CKS_ROLE_ATTN_NORM, false, FUSE_NONE},
    {"intermediate.dense", CKS_ROLE_DENSE_UP, false, FUSE_NONE},
    {"output.dense", CKS_ROLE_DENSE_DOWN, false, FUSE_NONE},
    {"output.LayerNorm", CKS_ROLE_FFN_NORM, false, FUSE_NONE},
};

/* Expert tensors: <moe>.experts.<e>.<leaf>. */
typedef struct expert_rule {
    const char *moe, *leaf;
    cks_role role;
} expert_rule;

static const expert_rule expert_rules[] = {
    {"mlp", "gate_proj", CKS_ROLE_EXPERT_GATE},
    {"mlp", "up_proj", CKS_ROLE_EXPERT_UP},
    {"mlp", "down_proj", CKS_ROLE_EXPERT_DOWN},
    /* Mixtral / Phi-3.5-MoE: w1 = gate, w3 = up, w2 = down (MixtralBlockSparseTop2MLP) */
    {"block_sparse_moe", "w1", CKS_ROLE_EXPERT_GATE},
    {"block_sparse_moe", "w3", CKS_ROLE_EXPERT_UP},
    {"block_sparse_moe", "w2", CKS_ROLE_EXPERT_DOWN},
};

/* Names only a multi-token-prediction block has (DeepSeek-V3 / GLM-4.5 "nextn" layers). */
static const char *const mtp_marks[] = {"eh_proj", "enorm", "hnorm", "shared_head"};

/* ---- whole-model names, matched on the tail of the module path ---- */

typedef struct top_rule {
    const char *tail;
    cks_role role;
} top_rule;

static const top_rule top_rules[] = {
    {"embed_tokens", CKS_ROLE_EMBED},
    {"wte", CKS_ROLE_EMBED},
    {"tok_embeddings", CKS_ROLE_EMBED},
    {"embeddings.word_embeddings", CKS_ROLE_EMBED},
    {"wpe", CKS_ROLE_POS_EMBED},
    {"embeddings.position_embeddings", CKS_ROLE_POS_EMBED},
    {"embeddings.token_type_embeddings", CKS_ROLE_TYPE_EMBED},
    {"embeddings.LayerNorm", CKS_ROLE_EMBED_NORM},
    {"norm", CKS_ROLE_FINAL_NORM},
    {"ln_f", CKS_ROLE_FINAL_NORM},
    {"final_layernorm", CKS_ROLE_FINAL_NORM},
    {"final_layer_norm", CKS_ROLE_FINAL_NORM},
    {"lm_head", CKS_ROLE_LM_HEAD},
    {"embed_out", CKS_ROLE_LM_HEAD},
    {"classifier", CKS_ROLE_HEAD},
    {"classifier.dense", CKS_ROLE_HEAD},     /* RoBERTa's classification head */
    {"classifier.out_proj", CKS_ROLE_HEAD},
    {"pre_classifier", CKS_ROLE_HEAD},       /* DistilBERT's */
    {"score", CKS_ROLE_HEAD},
    {"qa_outputs", CKS_ROLE_HEAD},
    {"pooler.dense", CKS_ROLE_HEAD},
};

static bool path_tail_is(const seg *segs, size_t n, const char *tail)
{
    seg t[8];
    size_t k = split_name(tail, t, 8);
    if (k == 0 || k > n)
        return false;
    for (size_t i = 0; i < k; i++)
        if (t[i].len != segs[n - k + i].len || memcmp(t[i].p, segs[n - k + i].p, t[i].len) != 0)
            return false;
    return true;
}

/* The parameter a name's last segment denotes; false when it is none of them. */
static bool part_of(seg last, cks_part *part)
{
    if (seg_is(last, "weight") || seg_is(last, "gamma"))
        *part = CKS_PART_WEIGHT;
    else if (seg_is(last, "bias") || seg_is(last, "beta"))
        *part = CKS_PART_BIAS;
    else if (seg_is(last, "weight_scale_inv"))
        *part = CKS_PART_SCALE;
    else
        return false;
    return true;
}

/* Where the layer index sits: "<...>.(layers|h|layer|blocks).<N>.<rest>". */
static bool find_layer(const seg *segs, size_t n, size_t *at, long *index)
{
    for (size_t i = 0; i + 2 < n; i++) {
        if (seg_is(segs[i], "layers") || seg_is(segs[i], "h") || seg_is(segs[i], "layer") ||
            seg_is(segs[i], "blocks")) {
            long v = seg_index(segs[i + 1], CKS_ROLES_MAX_LAYERS);
            if (v >= 0) {
                *at = i + 2;
                *index = v;
                return true;
            }
        }
    }
    return false;
}

typedef struct parsed {
    cks_role role;
    cks_part part;
    long layer, expert;
    bool transposed;
    enum fuse_kind fuse;
    bool mtp_mark;     /* the name is one only an MTP block has */
} parsed;

/* Classify a name, given as segments, by itself (no config). */
static void classify(const seg *segs, size_t n, parsed *r)
{
    size_t at = 0;
    long layer = -1;
    char rest[MAX_REST];

    if (n < 2)
        return;

    if (find_layer(segs, n, &at, &layer)) {
        r->layer = layer;
        for (size_t m = 0; m < sizeof mtp_marks / sizeof mtp_marks[0]; m++)
            if (seg_is(segs[at], mtp_marks[m]))
                r->mtp_mark = true;
        /* the router's correction bias is a tensor of its own with no .weight */
        if (seg_is(segs[n - 1], "e_score_correction_bias") && n - at == 3 && seg_is(segs[at], "mlp") &&
            seg_is(segs[at + 1], "gate")) {
            r->role = CKS_ROLE_ROUTER_BIAS;
            r->part = CKS_PART_WEIGHT;
            return;
        }
        if (!part_of(segs[n - 1], &r->part))
            return;
        /* experts: <moe>.experts.<e>.<leaf>.<part> */
        if (n - at == 5 && seg_is(segs[at + 1], "experts")) {
            long e = seg_index(segs[at + 2], CKS_ROLES_MAX_EXPERTS);
            for (size_t k = 0; e >= 0 && k < sizeof expert_rules / sizeof expert_rules[0]; k++) {
                if (seg_is(segs[at], expert_rules[k].moe) && seg_is(segs[at + 3], expert_rules[k].leaf)) {
                    r->role = expert_rules[k].role;
                    r->expert = e;
                    return;
                }
            }
            return;
        }
        if (!join_segs(segs, at, n - 1, rest, sizeof rest))
            return;
        for (size_t k = 0; k < sizeof layer_rules / sizeof layer_rules[0]; k++) {
            if (strcmp(rest, layer_rules[k].rest) == 0) {
                r->role = layer_rules[k].role;
                /* only the Conv1D matrix is [in, out]; its bias is a plain vector */
                r->transposed = layer_rules[k].transposed && r->part == CKS_PART_WEIGHT;
                r->fuse = layer_rules[k].fuse;
                return;
            }
        }
        return;
    }

    if (!part_of(segs[n - 1], &r->part))
        return;
    /* BERT's masked-LM head ("cls.predictions...") sits under a "cls" root */
    if (seg_is(segs[0], "cls")) {
        r->role = CKS_ROLE_HEAD;
        return;
    }
    /* Meta's format calls the LM head just "output"; only at the root, where nothing else is */
    if (n == 2 && seg_is(segs[0], "output")) {
        r->role = CKS_ROLE_LM_HEAD;
        return;
    }
    for (size_t k = 0; k < sizeof top_rules / sizeof top_rules[0]; k++) {
        if (path_tail_is(segs, n - 1, top_rules[k].tail)) {
            r->role = top_rules[k].role;
            return;
        }
    }
}

/*
 * Classify a tensor name. LoRA adapters take their module's role as a part of their own:
 * PEFT writes <module>.lora_A.weight ([r, in]) and lora_B.weight ([out, r]); mlx-lm writes
 * <module>.lora_a ([in, r]) and lora_b ([r, out]), the transposed layout.
 */
static void parse_name(const char *name, parsed *r)
{
    seg segs[MAX_SEGMENTS];
    size_t n = split_name(name, segs, MAX_SEGMENTS);
    cks_part lora = CKS_PART_WEIGHT;
    bool lora_transposed = false;

    memset(r, 0, sizeof *r);
    r->role = CKS_ROLE_OTHER;
    r->layer = -1;
    r->expert = -1;
    if (n >= 3 && seg_is(segs[n - 1], "weight") && (seg_is(segs[n - 2], "lora_A") || seg_is(segs[n - 2], "lora_B"))) {
        lora = seg_is(segs[n - 2], "lora_A") ? CKS_PART_LORA_A : CKS_PART_LORA_B;
        segs[n - 2] = segs[n - 1];
        n--;
    } else if (n >= 2 && (seg_is(segs[n - 1], "lora_a") || seg_is(segs[n - 1], "lora_b"))) {
        lora = seg_is(segs[n - 1], "lora_a") ? CKS_PART_LORA_A : CKS_PART_LORA_B;
        segs[n - 1] = (seg){"weight", 6};
        lora_transposed = true;
    }
    classify(segs, n, r);
    if (lora != CKS_PART_WEIGHT && r->part == CKS_PART_WEIGHT && r->role != CKS_ROLE_OTHER) {
        r->part = lora;
        r->transposed = lora_transposed;
    } else if (lora != CKS_PART_WEIGHT) {
        r->role = CKS_ROLE_OTHER; /* a LoRA factor of something without a role */
        r->part = lora;
    }
}

/* ---- config.json ---- */

static void config_unknown(cks_arch_config *c)
{
    memset(c, 0, sizeof *c);
    c->num_hidden_layers = c->hidden_size = c->num_attention_heads = c->num_key_value_heads = -1;
    c->head_dim = c->intermediate_size = c->moe_intermediate_size = c->vocab_size = -1;
    c->n_routed_experts = c->n_shared_experts = c->num_nextn_predict_layers = -1;
    c->first_k_dense_replace = -1;
    c->tie_word_embeddings = -1;
}

/* The first of `keys` present in obj (null counts as absent), as a bounded integer. */
static cks_err get_int(const cJSON *obj, const char *const *keys, int64_t max, int64_t *out, cks_diag *diag)
{
    for (size_t i = 0; keys[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, keys[i]);
        if (!v || cJSON_IsNull(v))
            continue;
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > (double)max ||
            v->valuedouble != (double)(int64_t)v->valuedouble)
            return cks_fail(diag, CKS_ERR_INVALID_ARG,
                            "config.json: \"%s\" is not an integer between 0 and %lld", keys[i],
                            (long long)max);
        *out = (int64_t)v->valuedouble;
        return CKS_OK;
    }
    return CKS_OK;
}

static cks_err read_fields(const cJSON *obj, cks_arch_config *c, cks_diag *diag)
{
    static const char *const k_layers[] = {"num_hidden_layers", "n_layer", "num_layers", NULL};
    static const char *const k_hidden[] = {"hidden_size", "n_embd", "d_model", NULL};
    static const char *const k_heads[] = {"num_attention_heads", "n_head", NULL};
    static const char *const k_kv[] = {"num_key_value_heads", NULL};
    static const char *const k_hd[] = {"head_dim", NULL};
    static const char *const k_inter[] = {"intermediate_size", "n_inner", NULL};
    static const char *const k_moe_inter[] = {"moe_intermediate_size", NULL};
    static const char *const k_vocab[] = {"vocab_size", NULL};
    static const char *const k_experts[] = {"n_routed_experts", "num_local_experts", "num_experts", NULL};
    static const char *const k_shared[] = {"n_shared_experts", NULL};
    static const char *const k_nextn[] = {"num_nextn_predict_layers", NULL};
    static const char *const k_dense[] = {"first_k_dense_replace", NULL};
    const cJSON *v;
    cks_err err;

    if ((err = get_int(obj, k_layers, CKS_ROLES_MAX_LAYERS, &c->num_hidden_layers, diag)) ||
        (err = get_int(obj, k_hidden, MAX_WIDTH, &c->hidden_size, diag)) ||
        (err = get_int(obj, k_heads, MAX_WIDTH, &c->num_attention_heads, diag)) ||
        (err = get_int(obj, k_kv, MAX_WIDTH, &c->num_key_value_heads, diag)) ||
        (err = get_int(obj, k_hd, MAX_WIDTH, &c->head_dim, diag)) ||
        (err = get_int(obj, k_inter, MAX_WIDTH, &c->intermediate_size, diag)) ||
        (err = get_int(obj, k_moe_inter, MAX_WIDTH, &c->moe_intermediate_size, diag)) ||
        (err = get_int(obj, k_vocab, MAX_WIDTH, &c->vocab_size, diag)) ||
        (err = get_int(obj, k_experts, CKS_ROLES_MAX_EXPERTS, &c->n_routed_experts, diag)) ||
        (err = get_int(obj, k_shared, CKS_ROLES_MAX_EXPERTS, &c->n_shared_experts, diag)) ||
        (err = get_int(obj, k_nextn, CKS_ROLES_MAX_LAYERS, &c->num_nextn_predict_layers, diag)) ||
        (err = get_int(obj, k_dense, CKS_ROLES_MAX_LAYERS, &c->first_k_dense_replace, diag)))
        return err;
    v = cJSON_GetObjectItemCaseSensitive(obj, "tie_word_embeddings");
    if (cJSON_IsBool(v))
        c->tie_word_embeddings = cJSON_IsTrue(v) ? 1 : 0;
    v = cJSON_GetObjectItemCaseSensitive(obj, "model_type");
    if (cJSON_IsString(v) && v->valuestring && !c->model_type[0])
        snprintf(c->model_type, sizeof c->model_type, "%s", v->valuestring);
    return CKS_OK;
}

cks_err cks_arch_config_parse(const char *json, size_t len, cks_arch_config *out, cks_diag *diag)
{
    cJSON *root = NULL;
    cks_err err = CKS_OK;
    cks_arch_config c;

    config_unknown(&c);
    if (!json || !out) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "config.json: no buffer");
        goto out;
    }
    if (len > CKS_ROLES_MAX_CONFIG) {
        err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "config.json is %zu bytes, more than the %u allowed", len,
                       CKS_ROLES_MAX_CONFIG);
        goto out;
    }
    root = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(root)) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "config.json is not a JSON object");
        goto out;
    }
    if ((err = read_fields(root, &c, diag)))
        goto out;
    /* multimodal wrappers keep the language model's shape in text_config */
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    if (c.num_hidden_layers < 0 && cJSON_IsObject(text)) {
        char top_type[sizeof c.model_type];
        memcpy(top_type, c.model_type, sizeof top_type);
        if ((err = read_fields(text, &c, diag)))
            goto out;
        if (top_type[0])
            memcpy(c.model_type, top_type, sizeof top_type);
    }
out:
    cJSON_Delete(root);
    if (out)
        *out = c;
    return err;
}

/* ---- building the map ---- */

static const char *const known_types[] = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "deepseek_v2", "deepseek_v3",
    "glm4_moe", "solar_open", "phimoe", "phi3", "gpt2", "bert", "roberta", "distilbert", "gemma2", "gemma3_text", "gemma3",
};

static const char *family_of(const cks_arch_config *cfg, bool any_expert, bool any_router_bias,
                             bool any_c_attn, bool any_bert, bool any_qkv_fused, bool any_mixtral,
                             bool any_llama)
{
    for (size_t i = 0; i < sizeof known_types / sizeof known_types[0]; i++)
        if (strcmp(cfg->model_type, known_types[i]) == 0)
            return known_types[i];
    if (cfg->model_type[0])
        return "unknown";
    if (any_c_attn)
        return "gpt2";
    if (any_bert)
        return "bert";
    if (any_mixtral)
        return "mixtral";
    if (any_router_bias)
        return "deepseek_v3";
    if (any_qkv_fused)
        return "phi3";
    if (any_expert)
        return "qwen2_moe";
    if (any_llama)
        return "llama";
    return "unknown";
}

static void set_split(cks_tensor_role *e, enum fuse_kind fuse, const cks_arch_config *cfg)
{
    const cks_tensor_info *info = e->tensor->info;
    unsigned axis = (e->transposed && info->ndim == 2) ? 1 : 0;
    uint64_t total;

    e->fused = true;
    e->split.n_slices = 0;
    /* a LoRA A factor sits on the input side, which the fusion does not cut */
    if (info->ndim < 1 || info->ndim > 2 || e->part == CKS_PART_LORA_A)
        return;
    total = info->shape[axis];
    e->split.axis = axis;
    if (fuse == FUSE_QKV_THIRDS && total % 3 == 0) {
        for (unsigned i = 0; i < 3; i++) {
            e->split.slices[i].role = (cks_role)(CKS_ROLE_Q + i);
            e->split.slices[i].begin = i * (total / 3);
            e->split.slices[i].count = total / 3;
        }
        e->split.n_slices = 3;
    } else if (fuse == FUSE_QKV_HEADS) {
        uint64_t q = 0, kv = 0;
        int64_t hd = cfg->head_dim;
        if (hd <= 0 && cfg->hidden_size > 0 && cfg->num_attention_heads > 0)
            hd = cfg->hidden_size / cfg->num_attention_heads;
        if (hd > 0 && cfg->num_attention_heads > 0 && cfg->num_key_value_heads > 0) {
            q = (uint64_t)cfg->num_attention_heads * (uint64_t)hd;
            kv = (uint64_t)cfg->num_key_value_heads * (uint64_t)hd;
        } else if (info->ndim == 2 && info->shape[1] < total && (total - info->shape[1]) % 2 == 0) {
            /* without a config: q is as wide as the model, k and v share the rest */
            q = info->shape[1];
            kv = (total - q) / 2;
        }
        if (q > 0 && kv > 0 && q <= total && kv <= (total - q) / 2 && q + 2 * kv == total) {
            e->split.slices[0] = (cks_fused_slice){CKS_ROLE_Q, 0, q};
            e->split.slices[1] = (cks_fused_slice){CKS_ROLE_K, q, kv};
            e->split.slices[2] = (cks_fused_slice){CKS_ROLE_V, q + kv, kv};
            e->split.n_slices = 3;
        }
    } else if (fuse == FUSE_GATE_UP && total % 2 == 0) {
        /* Phi-3: gate first, then up (Phi3MLP chunks the output in that order) */
        e->split.slices[0] = (cks_fused_slice){CKS_ROLE_DENSE_GATE, 0, total / 2};
        e->split.slices[1] = (cks_fused_slice){CKS_ROLE_DENSE_UP, total / 2, total / 2};
        e->split.n_slices = 2;
    }
}

static int key_cmp(const cks_tensor_role *a, cks_role role, cks_part part, int layer, int expert)
{
    if (a->role != role)
        return a->role < role ? -1 : 1;
    if (a->part != part)
        return a->part < part ? -1 : 1;
    if (a->layer != layer)
        return a->layer < layer ? -1 : 1;
    if (a->expert != expert)
        return a->expert < expert ? -1 : 1;
    return 0;
}

static int order_cmp(const void *pa, const void *pb, void *ctx)
{
    const cks_tensor_role *e = ctx;
    size_t a = *(const size_t *)pa, b = *(const size_t *)pb;
    int c = key_cmp(&e[a], e[b].role, e[b].part, e[b].layer, e[b].expert);
    if (c)
        return c;
    return a < b ? -1 : a > b;
}

static void note_add(cks_roles *r, const char *text)
{
    size_t k = strlen(r->note);
    snprintf(r->note + k, sizeof r->note - k, "%s%s", k ? "; " : "", text);
}

cks_err cks_roles_build(const cks_ckpt *ckpt, const char *config_json, size_t config_len, cks_roles **out,
                        cks_diag *diag)
{
    cks_roles *r = NULL;
    parsed *p = NULL;
    cks_err err = CKS_OK;
    long max_layer = -1, min_mtp_mark = -1;
    bool any_expert = false, any_router_bias = false, any_c_attn = false, any_bert = false;
    bool any_qkv_fused = false, any_mixtral = false, any_llama = false, sandwich = false;
    bool beyond = false;

    if (out)
        *out = NULL;
    if (!ckpt || !out) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "roles: no checkpoint");
        goto out;
    }
    r = calloc(1, sizeof *r);
    if (!r || !(p = calloc(ckpt->n_tensors ? ckpt->n_tensors : 1, sizeof *p)) ||
        !(r->entries = calloc(ckpt->n_tensors ? ckpt->n_tensors : 1, sizeof *r->entries)) ||
        !(r->order = calloc(ckpt->n_tensors ? ckpt->n_tensors : 1, sizeof *r->order))) {
        err = cks_fail(diag, CKS_ERR_NOMEM, "roles: out of memory for %zu tensors", ckpt->n_tensors);
        goto out;
    }
    r->ckpt = ckpt;
    r->n = ckpt->n_tensors;
    config_unknown(&r->cfg);
    if (config_json) {
        if ((err = cks_arch_config_parse(config_json, config_len, &r->cfg, diag)))
            goto out;
    } else {
        r->inferred = true;
        note_add(r, "no config.json: depth, widths and expert counts inferred from tensor names and shapes");
    }

    for (size_t i = 0; i < r->n; i++) {
        const char *name = ckpt->tensors[i].info->name;
        parse_name(name, &p[i]);
        if (p[i].layer > max_layer)
            max_layer = p[i].layer;
        if (p[i].mtp_mark && (min_mtp_mark < 0 || p[i].layer < min_mtp_mark))
            min_mtp_mark = p[i].layer;
        any_expert |= p[i].expert >= 0;
        any_router_bias |= p[i].role == CKS_ROLE_ROUTER_BIAS;
        any_c_attn |= strstr(name, "attn.c_attn.") != NULL;
        any_bert |= strstr(name, "attention.self.") != NULL;
        any_qkv_fused |= strstr(name, "self_attn.qkv_proj.") != NULL;
        any_mixtral |= strstr(name, "block_sparse_moe.") != NULL;
        any_llama |= strstr(name, "self_attn.q_proj.") != NULL;
        sandwich |= strstr(name, "pre_feedforward_layernorm.") != NULL;
    }
    r->family = family_of(&r->cfg, any_expert, any_router_bias, any_c_attn, any_bert, any_qkv_fused,
                          any_mixtral, any_llama);

    /* Depth: config first; then the first layer holding MTP-only names; then the names. */
    if (r->cfg.num_hidden_layers >= 0) {
        r->n_layers = (int)r->cfg.num_hidden_layers;
        r->n_mtp_layers = r->cfg.num_nextn_predict_layers > 0 ? (int)r->cfg.num_nextn_predict_layers : 0;
        if (r->n_mtp_layers == 0 && min_mtp_mark >= r->n_layers) {
            /* the block is there though the config does not announce it */
            r->n_mtp_layers = (int)(max_layer - r->n_layers + 1);
            note_add(r, "layers beyond num_hidden_layers hold multi-token-prediction tensors: treated as MTP");
        }
    } else {
        r->n_layers = (int)(min_mtp_mark >= 0 ? min_mtp_mark : max_layer + 1);
        r->n_mtp_layers = min_mtp_mark >= 0 ? (int)(max_layer - min_mtp_mark + 1) : 0;
        r->cfg.num_hidden_layers = r->n_layers;
        if (!r->inferred)
            note_add(r, "config.json has no layer count: inferred from tensor names");
        if (r->n_mtp_layers > 0)
            note_add(r, "layers holding eh_proj/enorm/hnorm/shared_head treated as MTP");
    }

    for (size_t i = 0; i < r->n; i++) {
        cks_tensor_role *e = &r->entries[i];
        e->tensor = &ckpt->tensors[i];
        e->role = p[i].role;
        e->part = p[i].part;
        e->layer = (int)p[i].layer;
        e->expert = (int)p[i].expert;
        e->transposed = p[i].transposed;
        if (e->layer >= r->n_layers) {
            /* MTP: whatever the tensor would be in a layer, it is not a decoder layer's */
            if (e->layer < r->n_layers + r->n_mtp_layers) {
                e->role = CKS_ROLE_MTP;
                e->expert = -1;
            } else {
                e->role = CKS_ROLE_OTHER;
                beyond = true;
            }
            e->transposed = false;
            continue;
        }
        if (e->role == CKS_ROLE_FFN_NORM && sandwich &&
            strstr(e->tensor->info->name, "post_attention_layernorm.") != NULL)
            e->role = CKS_ROLE_POST_ATTN_NORM; /* Gemma-2/3: a post-norm, the pre-norm is separate */
        if (p[i].fuse != FUSE_NONE)
            set_split(e, p[i].fuse, &r->cfg);
    }
    if (beyond)
        note_add(r, "tensors in layers beyond num_hidden_layers (+ MTP) mapped to \"other\"");

    /* Fill what the config did not say from shapes, so callers see one set of numbers. */
    const cks_tensor_role *t;
    int max_e = -1;
    for (size_t i = 0; i < r->n; i++)
        if (r->entries[i].expert > max_e)
            max_e = r->entries[i].expert;
    if (r->cfg.n_routed_experts < 0 && max_e >= 0)
        r->cfg.n_routed_experts = max_e + 1;
    for (size_t i = 0; i < r->n; i++)
        r->order[i] = i;
    qsort_r(r->order, r->n, sizeof *r->order, order_cmp, r->entries);
    if ((t = cks_roles_find(r, CKS_ROLE_EMBED, CKS_PART_WEIGHT, -1, -1)) && t->tensor->info->ndim == 2) {
        if (r->cfg.vocab_size < 0)
            r->cfg.vocab_size = (int64_t)t->tensor->info->shape[0];
        if (r->cfg.hidden_size < 0)
            r->cfg.hidden_size = (int64_t)t->tensor->info->shape[1];
    }
    if (r->cfg.hidden_size < 0 && (t = cks_roles_find(r, CKS_ROLE_ATTN_NORM, CKS_PART_WEIGHT, 0, -1)) &&
        t->tensor->info->ndim == 1)
        r->cfg.hidden_size = (int64_t)t->tensor->info->shape[0];
    if (r->cfg.tie_word_embeddings < 0 && r->inferred)
        r->cfg.tie_word_embeddings = cks_roles_find(r, CKS_ROLE_LM_HEAD, CKS_PART_WEIGHT, -1, -1) ? 0 : 1;

    *out = r;
    r = NULL;
out:
    free(p);
    cks_roles_free(r);
    return err;
}

cks_err cks_roles_load_dir(const cks_ckpt *ckpt, const char *dir, cks_roles **out, cks_diag *diag)
{
    char path[4096];
    char *data = NULL;
    size_t len = 0;
    FILE *f = NULL;
    cks_err err = CKS_OK;

    if (out)
        *out = NULL;
    if (!dir || (size_t)snprintf(path, sizeof path, "%s/config.json", dir) >= sizeof path) {
        err = cks_fail(diag, CKS_ERR_INVALID_ARG, "roles: directory path missing or too long");
        goto out;
    }
    f = fopen(path, "rb");
    if (!f && errno != ENOENT) {
        err = cks_fail(diag, CKS_ERR_IO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (f) {
        /* one byte more than allowed tells "too large" apart from "exactly the limit" */
        data = malloc(CKS_ROLES_MAX_CONFIG + 1);
        if (!data) {
            err = cks_fail(diag, CKS_ERR_NOMEM, "roles: out of memory reading %s", path);
            goto out;
        }
        len = fread(data, 1, CKS_ROLES_MAX_CONFIG + 1, f);
        if (ferror(f)) {
            err = cks_fail(diag, CKS_ERR_IO, "%s: read error", path);
            goto out;
        }
        if (len > CKS_ROLES_MAX_CONFIG) {
            err = cks_fail(diag, CKS_ERR_UNSUPPORTED, "%s is larger than %u bytes", path, CKS_ROLES_MAX_CONFIG);
            goto out;
        }
    }
    err = cks_roles_build(ckpt, data, len, out, diag);
out:
    if (f)
        fclose(f);
    free(data);
    return err;
}

const cks_tensor_role *cks_roles_find(const cks_roles *roles, cks_role role, cks_part part, int layer,
                                      int expert)
{
    size_t lo = 0, hi;
    if (!roles)
        return NULL;
    hi = roles->n;
    /* the first entry not below the key */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (key_cmp(&roles->entries[roles->order[mid]], role, part, layer, expert) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < roles->n && key_cmp(&roles->entries[roles->order[lo]], role, part, layer, expert) == 0)
        return &roles->entries[roles->order[lo]];
    return NULL;
}

const cks_tensor_role *cks_roles_locate(const cks_roles *roles, cks_role role, cks_part part, int layer,
                                        int expert, const cks_fused_slice **slice)
{
    const cks_tensor_role *t = cks_roles_find(roles, role, part, layer, expert);
    cks_role fused_role = CKS_ROLE_OTHER;

    if (slice)
        *slice = NULL;
    if (t)
        return t;
    if (role == CKS_ROLE_Q || role == CKS_ROLE_K || role == CKS_ROLE_V)
        fused_role = CKS_ROLE_QKV;
    else if (role == CKS_ROLE_DENSE_GATE || role == CKS_ROLE_DENSE_UP)
        fused_role = CKS_ROLE_DENSE_GATE_UP;
    else
        return NULL;
    t = cks_roles_find(roles, fused_role, part, layer, expert);
    if (!t)
        return NULL;
    for (unsigned i = 0; i < t->split.n_slices; i++) {
        if (t->split.slices[i].role == role) {
            if (slice)
                *slice = &t->split.slices[i];
            return t;
        }
    }
    return NULL;
}

int cks_roles_layer_experts(const cks_roles *roles, int layer)
{
    int max_e = -1;
    if (!roles)
        return 0;
    for (size_t i = 0; i < roles->n; i++)
        if (roles->entries[i].layer == layer && roles->entries[i].role != CKS_ROLE_MTP &&
            roles->entries[i].expert > max_e)
            max_e = roles->entries[i].expert;
    return max_e + 1;
}

const char *cks_role_name(cks_role role)
{
    static const char *const names[CKS_ROLE__COUNT] = {
        [CKS_ROLE_OTHER] = "other",
        [CKS_ROLE_EMBED] = "embed",
        [CKS_ROLE_POS_EMBED] = "pos_embed",
        [CKS_ROLE_TYPE_EMBED] = "type_embed",
        [CKS_ROLE_EMBED_NORM] = "embed_norm",
        [CKS_ROLE_FINAL_NORM] = "final_norm",
        [CKS_ROLE_LM_HEAD] = "lm_head",
        [CKS_ROLE_HEAD] = "head",
        [CKS_ROLE_ATTN_NORM] = "attn_norm",
        [CKS_ROLE_FFN_NORM] = "ffn_norm",
        [CKS_ROLE_POST_ATTN_NORM] = "post_attn_norm",
        [CKS_ROLE_POST_FFN_NORM] = "post_ffn_norm",
        [CKS_ROLE_Q] = "q",
        [CKS_ROLE_K] = "k",
        [CKS_ROLE_V] = "v",
        [CKS_ROLE_O] = "o",
        [CKS_ROLE_QKV] = "qkv",
        [CKS_ROLE_Q_NORM] = "q_norm",
        [CKS_ROLE_K_NORM] = "k_norm",
        [CKS_ROLE_Q_A] = "q_a",
        [CKS_ROLE_Q_A_NORM] = "q_a_norm",
        [CKS_ROLE_Q_B] = "q_b",
        [CKS_ROLE_KV_A] = "kv_a",
        [CKS_ROLE_KV_A_NORM] = "kv_a_norm",
        [CKS_ROLE_KV_B] = "kv_b",
        [CKS_ROLE_ROUTER] = "router",
        [CKS_ROLE_ROUTER_BIAS] = "router_bias",
        [CKS_ROLE_EXPERT_GATE] = "expert_gate",
        [CKS_ROLE_EXPERT_UP] = "expert_up",
        [CKS_ROLE_EXPERT_DOWN] = "expert_down",
        [CKS_ROLE_SHARED_GATE] = "shared_gate",
        [CKS_ROLE_SHARED_UP] = "shared_up",
        [CKS_ROLE_SHARED_DOWN] = "shared_down",
        [CKS_ROLE_SHARED_EXPERT_GATE] = "shared_expert_gate",
        [CKS_ROLE_DENSE_GATE] = "dense_gate",
        [CKS_ROLE_DENSE_UP] = "dense_up",
        [CKS_ROLE_DENSE_DOWN] = "dense_down",
        [CKS_ROLE_DENSE_GATE_UP] = "dense_gate_up",
        [CKS_ROLE_MTP] = "mtp",
    };
    if ((unsigned)role >= CKS_ROLE__COUNT || !names[role])
        return "other";
    return names[role];
}

const char *cks_part_name(cks_part part)
{
    switch (part) {
    case CKS_PART_WEIGHT:
        return "weight";
    case CKS_PART_BIAS:
        return "bias";
    case CKS_PART_SCALE:
        return "scale";
    case CKS_PART_LORA_A:
        return "lora_a";
    case CKS_PART_LORA_B:
        return "lora_b";
    default:
        return "?";
    }
}

void cks_roles_free(cks_roles *roles)
{
    if (!roles)
        return;
    free(roles->entries);
    free(roles->order);
    free(roles);
}
