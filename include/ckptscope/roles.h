/*
 * ckptscope/roles.h — canonical tensor roles: which tensor is layer L's attention norm,
 * key projection, router, expert e's down projection, ... whatever the architecture calls it.
 *
 * Contract:
 *   - cks_roles_build() maps every tensor of a checkpoint (ckpt->tensors order) to one
 *     cks_tensor_role. Names decide the role; config.json decides what names cannot: the
 *     number of decoder layers, and therefore which stored `model.layers.N` are the
 *     multi-token-prediction block (GLM-4.5 and DeepSeek-V3 store it as layers
 *     num_hidden_layers .. num_hidden_layers + num_nextn_predict_layers - 1; it is role
 *     CKS_ROLE_MTP, never a decoder layer). Without config.json the depth, widths and expert
 *     counts are inferred from names and shapes, and `inferred` says so.
 *   - Covered naming schemes: Llama / Mistral / Qwen2 / Qwen3 (q/k/v biases, q/k norms),
 *     Mixtral and Phi-3.5-MoE (block_sparse_moe.*, w1/w3/w2), DeepSeek-V2/V3 and GLM-4.5
 *     (glm4_moe) and Solar-Open (mlp.gate router, e_score_correction_bias, mlp.experts.N,
 *     mlp.shared_experts, MLA projections, FP8 weight_scale_inv), Qwen2-MoE (shared_expert,
 *     shared_expert_gate), Phi-3 (fused qkv_proj, gate_up_proj), GPT-2 (Conv1D weights stored
 *     [in, out]: `transposed`; fused c_attn), BERT / RoBERTa / DistilBERT (post-LN encoders;
 *     old gamma/beta names), Meta's original Llama names, Gemma-2 sandwich norms, and LoRA
 *     adapters of any of these (PEFT and mlx-lm: the module's role, part LORA_A / LORA_B).
 *     Any name outside these is CKS_ROLE_OTHER: comparing it by name and shape is the
 *     caller's fallback, not this module's.
 *   - Post-LN models (BERT) have no pre-norms: attn_norm is the LayerNorm that closes the
 *     attention sub-block (attention.output.LayerNorm), ffn_norm the one closing the FFN.
 *     That pairs the same gains across two models of the family, which is what a norm-gain
 *     comparison needs.
 *   - A fused tensor (GPT-2 c_attn, Phi-3 qkv_proj / gate_up_proj) has role CKS_ROLE_QKV or
 *     CKS_ROLE_DENSE_GATE_UP and a split description (which slice along which stored axis is
 *     q, k, v / gate, up); cks_roles_locate() finds a role inside a fused tensor.
 *   - The map borrows the checkpoint: it is valid while the cks_ckpt lives.
 *   - Nothing here reads weights; config.json is at most CKS_ROLES_MAX_CONFIG bytes.
 */
#ifndef CKPTSCOPE_ROLES_H
#define CKPTSCOPE_ROLES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/checkpoint.h"
#include "ckptscope/error.h"

#define CKS_ROLES_MAX_CONFIG (4u << 20) /* real config.json files are a few KiB */
#define CKS_ROLES_MAX_LAYERS 100000     /* a layer index above this is not a layer */
#define CKS_ROLES_MAX_EXPERTS 1000000

typedef enum cks_role {
    CKS_ROLE_OTHER = 0,
    /* whole-model tensors (layer -1) */
    CKS_ROLE_EMBED,
    CKS_ROLE_POS_EMBED,      /* learned positions: GPT-2 wpe, BERT position_embeddings */
    CKS_ROLE_TYPE_EMBED,     /* BERT token_type_embeddings */
    CKS_ROLE_EMBED_NORM,     /* BERT embeddings.LayerNorm */
    CKS_ROLE_FINAL_NORM,
    CKS_ROLE_LM_HEAD,
    CKS_ROLE_HEAD,           /* task heads: classifier, score, pooler, cls.* */
    /* per decoder layer */
    CKS_ROLE_ATTN_NORM,
    CKS_ROLE_FFN_NORM,
    CKS_ROLE_POST_ATTN_NORM, /* Gemma-2/3 sandwich norms (after the sub-block) */
    CKS_ROLE_POST_FFN_NORM,
    CKS_ROLE_Q,
    CKS_ROLE_K,
    CKS_ROLE_V,
    CKS_ROLE_O,
    CKS_ROLE_QKV,            /* fused q, k, v */
    CKS_ROLE_Q_NORM,         /* per-head q/k RMSNorm (Qwen3) */
    CKS_ROLE_K_NORM,
    CKS_ROLE_Q_A,            /* multi-head latent attention (DeepSeek-V2/V3) */
    CKS_ROLE_Q_A_NORM,
    CKS_ROLE_Q_B,
    CKS_ROLE_KV_A,
    CKS_ROLE_KV_A_NORM,
    CKS_ROLE_KV_B,
    CKS_ROLE_ROUTER,
    CKS_ROLE_ROUTER_BIAS,    /* e_score_correction_bias: a bias of expert selection only */
    CKS_ROLE_EXPERT_GATE,    /* expert index in `expert` */
    CKS_ROLE_EXPERT_UP,
    CKS_ROLE_EXPERT_DOWN,
    CKS_ROLE_SHARED_GATE,    /* shared expert(s), always active */
    CKS_ROLE_SHARED_UP,
    CKS_ROLE_SHARED_DOWN,
    CKS_ROLE_SHARED_EXPERT_GATE, /* Qwen2-MoE's scalar gate on the shared expert */
    CKS_ROLE_DENSE_GATE,     /* a dense MLP (also GLM's / DeepSeek's first dense layers) */
    CKS_ROLE_DENSE_UP,
    CKS_ROLE_DENSE_DOWN,
    CKS_ROLE_DENSE_GATE_UP,  /* fused gate and up */
    CKS_ROLE_MTP,            /* any tensor of a multi-token-prediction block */
    CKS_ROLE__COUNT
} cks_role;

/* Which parameter of the role a tensor is. */
typedef enum cks_part {
    CKS_PART_WEIGHT = 0,
    CKS_PART_BIAS,
    CKS_PART_SCALE,          /* block-quantisation scales (FP8 weight_scale_inv) */
    CKS_PART_LORA_A,         /* LoRA adapter factors (PEFT lora_A/lora_B, mlx-lm lora_a/lora_b) */
    CKS_PART_LORA_B,
    CKS_PART__COUNT
} cks_part;

typedef struct cks_fused_slice {
    cks_role role;           /* CKS_ROLE_Q, ..., CKS_ROLE_DENSE_UP */
    uint64_t begin, count;   /* along the stored axis `axis` */
} cks_fused_slice;

typedef struct cks_fused {
    unsigned n_slices;       /* 0: not fused, the widths did not divide, or a LoRA A factor */
    unsigned axis;           /* stored axis the slices cut (1 for GPT-2's [in, out]) */
    cks_fused_slice slices[3];
} cks_fused;

typedef struct cks_tensor_role {
    const cks_ckpt_tensor *tensor;
    cks_role role;
    cks_part part;
    int layer;               /* decoder layer, or the stored index for MTP; -1 for none */
    int expert;              /* routed expert index, -1 for none */
    bool transposed;         /* stored [in, out] (GPT-2 Conv1D, mlx-lm LoRA) instead of [out, in] */
    bool fused;              /* role is CKS_ROLE_QKV or CKS_ROLE_DENSE_GATE_UP */
    cks_fused split;
} cks_tensor_role;

/* What config.json says (or what was inferred); -1 means unknown. */
typedef struct cks_arch_config {
    char model_type[64];     /* "" when unknown */
    int64_t num_hidden_layers;
    int64_t hidden_size;
    int64_t num_attention_heads;
    int64_t num_key_value_heads;
    int64_t head_dim;
    int64_t intermediate_size;
    int64_t moe_intermediate_size;
    int64_t vocab_size;
    int64_t n_routed_experts;   /* n_routed_experts / num_local_experts / num_experts */
    int64_t n_shared_experts;
    int64_t num_nextn_predict_layers;
    int64_t first_k_dense_replace;
    int tie_word_embeddings;    /* 0, 1, or -1 unknown */
} cks_arch_config;

typedef struct cks_roles {
    const cks_ckpt *ckpt;
    cks_arch_config cfg;
    const char *family;      /* "llama", "gpt2", "bert", "glm4_moe", ..., "unknown" */
    bool inferred;           /* no config.json: depth and widths come from names and shapes */
    char note[256];          /* what was inferred or ignored, for reports ("" when nothing) */
    int n_layers;            /* decoder layers (MTP excluded) */
    int n_mtp_layers;
    size_t n;                /* == ckpt->n_tensors */
    cks_tensor_role *entries;  /* entries[i] describes ckpt->tensors[i] */
    size_t *order;           /* entries sorted by (role, part, layer, expert), for lookups */
} cks_roles;

/*
 * Parse config.json (explicit length). Reads the fields of cks_arch_config under their
 * usual names and aliases (GPT-2's n_layer / n_embd / n_head / n_inner; a nested
 * text_config when the top level has no depth). Non-integers and absurd values are errors.
 */
cks_err cks_arch_config_parse(const char *json, size_t len, cks_arch_config *out, cks_diag *diag);

/* Map a checkpoint's tensors. config_json may be NULL (then everything is inferred). */
cks_err cks_roles_build(const cks_ckpt *ckpt, const char *config_json, size_t config_len,
                        cks_roles **out, cks_diag *diag);

/* Same, reading <dir>/config.json from local disk (absent: inferred). */
cks_err cks_roles_load_dir(const cks_ckpt *ckpt, const char *dir, cks_roles **out, cks_diag *diag);

/* The tensor with exactly this (role, part, layer, expert), or NULL. Use -1 for "none". */
const cks_tensor_role *cks_roles_find(const cks_roles *roles, cks_role role, cks_part part, int layer,
                                      int expert);

/*
 * Like cks_roles_find, but also looks inside fused tensors: returns the tensor holding the
 * role and sets *slice to the slice within it (NULL when the tensor is the role itself).
 */
const cks_tensor_role *cks_roles_locate(const cks_roles *roles, cks_role role, cks_part part, int layer,
                                        int expert, const cks_fused_slice **slice);

/* Number of routed experts seen in a layer (0 for a dense layer). */
int cks_roles_layer_experts(const cks_roles *roles, int layer);

/* Stable lowercase names: "attn_norm", "expert_down", "q" ... ; part names "weight", "bias", "scale". */
const char *cks_role_name(cks_role role);
const char *cks_part_name(cks_part part);

void cks_roles_free(cks_roles *roles);

#endif
