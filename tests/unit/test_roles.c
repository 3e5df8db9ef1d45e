/*
 * Tensor roles: small checkpoints in each family's real naming (written with the fixture
 * writer, filler bytes), with exact expectations for every tensor's role, part, layer and
 * expert. The names follow the published checkpoints (research/peers.md §5 for GLM-4.5-Air,
 * Solar-Open-100B, Phi-3.5-MoE).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "ckptscope/checkpoint.h"
#include "ckptscope/roles.h"
#include "support/stwriter.h"

#define MAX_SPECS 512

typedef struct spec {
    char name[160];
    uint64_t shape[4];
    unsigned ndim;
    cks_dtype dtype;
} spec;

static spec specs[MAX_SPECS];
static size_t n_specs;

static void reset(void)
{
    n_specs = 0;
}

static void add_t(cks_dtype dt, uint64_t a, uint64_t b, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void add_t(cks_dtype dt, uint64_t a, uint64_t b, const char *fmt, ...)
{
    va_list ap;
    spec *s;
    if (n_specs == MAX_SPECS)
        return;
    s = &specs[n_specs++];
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->shape[0] = a;
    s->shape[1] = b;
    s->ndim = b ? 2 : 1;
    s->dtype = dt;
}
#define add(a, b, ...) add_t(CKS_DTYPE_BF16, a, b, __VA_ARGS__)

static cks_ckpt *build(void)
{
    st_writer *w = st_writer_new();
    st_buf b = {0};
    cks_source *src = NULL;
    cks_ckpt *ckpt = NULL;
    char *relpath = strdup("model.safetensors");
    cks_diag diag;
    for (size_t i = 0; i < n_specs; i++)
        st_writer_add(w, specs[i].name, specs[i].dtype, specs[i].shape, specs[i].ndim, NULL);
    st_writer_finish(w, &b);
    if (cks_source_from_memory(b.data, b.len, "mem", true, &src, &diag) == CKS_OK) {
        if (cks_ckpt_from_sources("mem", &src, &relpath, 1, &ckpt, &diag) != CKS_OK)
            fprintf(stderr, "  checkpoint: %s\n", diag.text);
    } else {
        free(relpath);
    }
    st_writer_free(w);
    st_buf_free(&b);
    return ckpt;
}

static cks_roles *map(cks_ckpt *ckpt, const char *config)
{
    cks_roles *r = NULL;
    cks_diag diag;
    if (!ckpt)
        return NULL;
    if (cks_roles_build(ckpt, config, config ? strlen(config) : 0, &r, &diag) != CKS_OK)
        fprintf(stderr, "  roles: %s\n", diag.text);
    return r;
}

static const cks_tensor_role *entry(const cks_roles *r, const char *name)
{
    const cks_ckpt_tensor *t = cks_ckpt_find(r->ckpt, name);
    if (!t)
        return NULL;
    return &r->entries[t - r->ckpt->tensors];
}

/* One tensor's mapping, exactly. */
#define EXPECT(r, name, role_, part_, layer_, expert_)                                               \
    do {                                                                                             \
        const cks_tensor_role *e_ = entry(r, name);                                                  \
        CHECK_MSG(e_ != NULL, "%s missing", name);                                                   \
        if (e_)                                                                                      \
            CHECK_MSG(e_->role == (role_) && e_->part == (part_) && e_->layer == (layer_) &&         \
                          e_->expert == (expert_),                                                   \
                      "%s: got %s.%s L%d E%d, want %s.%s L%d E%d", name, cks_role_name(e_->role),    \
                      cks_part_name(e_->part), e_->layer, e_->expert, cks_role_name(role_),          \
                      cks_part_name(part_), layer_, expert_);                                        \
    } while (0)

#define W CKS_PART_WEIGHT
#define B CKS_PART_BIAS

static void add_llama_layer(int l, bool biases, bool qk_norm)
{
    add(8, 0, "model.layers.%d.input_layernorm.weight", l);
    add(8, 0, "model.layers.%d.post_attention_layernorm.weight", l);
    add(8, 8, "model.layers.%d.self_attn.q_proj.weight", l);
    add(4, 8, "model.layers.%d.self_attn.k_proj.weight", l);
    add(4, 8, "model.layers.%d.self_attn.v_proj.weight", l);
    add(8, 8, "model.layers.%d.self_attn.o_proj.weight", l);
    if (biases) {
        add(8, 0, "model.layers.%d.self_attn.q_proj.bias", l);
        add(4, 0, "model.layers.%d.self_attn.k_proj.bias", l);
        add(4, 0, "model.layers.%d.self_attn.v_proj.bias", l);
    }
    if (qk_norm) {
        add(4, 0, "model.layers.%d.self_attn.q_norm.weight", l);
        add(4, 0, "model.layers.%d.self_attn.k_norm.weight", l);
    }
}

static void add_dense_mlp(int l)
{
    add(16, 8, "model.layers.%d.mlp.gate_proj.weight", l);
    add(16, 8, "model.layers.%d.mlp.up_proj.weight", l);
    add(8, 16, "model.layers.%d.mlp.down_proj.weight", l);
}

static void expect_llama_layer(cks_roles *r, int l, bool biases)
{
    char n[160];
#define N(fmt) (snprintf(n, sizeof n, fmt, l), n)
    EXPECT(r, N("model.layers.%d.input_layernorm.weight"), CKS_ROLE_ATTN_NORM, W, l, -1);
    EXPECT(r, N("model.layers.%d.post_attention_layernorm.weight"), CKS_ROLE_FFN_NORM, W, l, -1);
    EXPECT(r, N("model.layers.%d.self_attn.q_proj.weight"), CKS_ROLE_Q, W, l, -1);
    EXPECT(r, N("model.layers.%d.self_attn.k_proj.weight"), CKS_ROLE_K, W, l, -1);
    EXPECT(r, N("model.layers.%d.self_attn.v_proj.weight"), CKS_ROLE_V, W, l, -1);
    EXPECT(r, N("model.layers.%d.self_attn.o_proj.weight"), CKS_ROLE_O, W, l, -1);
    if (biases) {
        EXPECT(r, N("model.layers.%d.self_attn.q_proj.bias"), CKS_ROLE_Q, B, l, -1);
        EXPECT(r, N("model.layers.%d.self_attn.k_proj.bias"), CKS_ROLE_K, B, l, -1);
        EXPECT(r, N("model.layers.%d.self_attn.v_proj.bias"), CKS_ROLE_V, B, l, -1);
    }
#undef N
}

static void add_top(void)
{
    add(32, 8, "model.embed_tokens.weight");
    add(8, 0, "model.norm.weight");
    add(32, 8, "lm_head.weight");
}

static void expect_top(cks_roles *r)
{
    EXPECT(r, "model.embed_tokens.weight", CKS_ROLE_EMBED, W, -1, -1);
    EXPECT(r, "model.norm.weight", CKS_ROLE_FINAL_NORM, W, -1, -1);
    EXPECT(r, "lm_head.weight", CKS_ROLE_LM_HEAD, W, -1, -1);
}

static void llama(void)
{
    reset();
    add_top();
    for (int l = 0; l < 2; l++) {
        add_llama_layer(l, false, false);
        add_dense_mlp(l);
    }
    add(4, 0, "model.layers.0.self_attn.rotary_emb.inv_freq");
    add(2, 8, "model.layers.1.self_attn.k_proj.lora_A.weight");
    add(4, 2, "model.layers.1.self_attn.k_proj.lora_B.weight");
    add(2, 8, "model.layers.1.self_attn.rotary_emb.lora_A.weight");
    cks_ckpt *c = build();
    cks_roles *r = map(c, "{\"model_type\":\"llama\",\"num_hidden_layers\":2,\"hidden_size\":8,"
                          "\"num_attention_heads\":2,\"num_key_value_heads\":1,\"intermediate_size\":16,"
                          "\"vocab_size\":32,\"tie_word_embeddings\":false}");
    CHECK(r != NULL);
    if (!r)
        goto out;
    CHECK_EQ_STR(r->family, "llama");
    CHECK(!r->inferred);
    CHECK_EQ_INT(r->n_layers, 2);
    CHECK_EQ_INT(r->n_mtp_layers, 0);
    CHECK_EQ_INT(r->cfg.num_key_value_heads, 1);
    CHECK_EQ_INT(r->cfg.tie_word_embeddings, 0);
    expect_top(r);
    for (int l = 0; l < 2; l++) {
        expect_llama_layer(r, l, false);
        char n[96];
        snprintf(n, sizeof n, "model.layers.%d.mlp.gate_proj.weight", l);
        EXPECT(r, n, CKS_ROLE_DENSE_GATE, W, l, -1);
        snprintf(n, sizeof n, "model.layers.%d.mlp.up_proj.weight", l);
        EXPECT(r, n, CKS_ROLE_DENSE_UP, W, l, -1);
        snprintf(n, sizeof n, "model.layers.%d.mlp.down_proj.weight", l);
        EXPECT(r, n, CKS_ROLE_DENSE_DOWN, W, l, -1);
    }
    EXPECT(r, "model.layers.0.self_attn.rotary_emb.inv_freq", CKS_ROLE_OTHER, W, 0, -1);
    EXPECT(r, "model.layers.1.self_attn.k_proj.lora_A.weight", CKS_ROLE_K, CKS_PART_LORA_A, 1, -1);
    EXPECT(r, "model.layers.1.self_attn.k_proj.lora_B.weight", CKS_ROLE_K, CKS_PART_LORA_B, 1, -1);
    EXPECT(r, "model.layers.1.self_attn.rotary_emb.lora_A.weight", CKS_ROLE_OTHER, CKS_PART_LORA_A, 1, -1);
    /* lookups */
    const cks_tensor_role *t = cks_roles_find(r, CKS_ROLE_K, W, 1, -1);
    CHECK(t && strcmp(t->tensor->info->name, "model.layers.1.self_attn.k_proj.weight") == 0);
    CHECK(cks_roles_find(r, CKS_ROLE_K, W, 2, -1) == NULL);
    CHECK(cks_roles_find(r, CKS_ROLE_K, B, 1, -1) == NULL);
    CHECK(cks_roles_find(r, CKS_ROLE_ROUTER, W, 0, -1) == NULL);
    CHECK_EQ_INT(cks_roles_layer_experts(r, 0), 0);
    /* a non-fused role is found by locate without a slice */
    const cks_fused_slice *sl = (const cks_fused_slice *)1;
    t = cks_roles_locate(r, CKS_ROLE_DENSE_UP, W, 0, -1, &sl);
    CHECK(t && t->role == CKS_ROLE_DENSE_UP && sl == NULL);
out:
    cks_roles_free(r);
    cks_ckpt_free(c);
}

/* Mistral names are Llama's; the family label comes from config.json. */
static void mistral(void)
{
    reset();
    add_top();
    add_llama_layer(0, false, false);
    add_dense_mlp(0);
    cks_ckpt *c = build();
    cks_roles *r = map(c, "{\"model_type\":\"mistral\",\"num_hidden_layers\":1,\"hidden_size\":8}");
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_STR(r->family, "mistral");
        expect_top(r);
        expect_llama_layer(r, 0, false);
        CHECK_EQ_INT(r->cfg.vocab_size, 32); /* filled in from the embedding's shape */
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

static void qwen2_and_qwen3(void)
{
    reset();
    add_top();
    for (int l = 0; l < 2; l++) {
        add_llama_layer(l, true, false);
        add_dense_mlp(l);
    }
    cks_ckpt *c = build();
    cks_roles *r = map(c, "{\"model_type\":\"qwen2\",\"num_hidden_layers\":2,\"tie_word_embeddings\":true}");
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_STR(r->family, "qwen2");
        CHECK_EQ_INT(r->cfg.tie_word_embeddings, 1);
        expect_llama_layer(r, 0, true);
        expect_llama_layer(r, 1, true);
        const cks_tensor_role *t = cks_roles_find(r, CKS_ROLE_V, B, 1, -1);
        CHECK(t && strcmp(t->tensor->info->name, "model.layers.1.self_attn.v_proj.bias") == 0);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);

    reset();
    add_top();
    add_llama_layer(0, false, true);
    add_dense_mlp(0);
    c = build();
    r = map(c, "{\"model_type\":\"qwen3\",\"num_hidden_layers\":1,\"head_dim\":4}");
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_STR(r->family, "qwen3");
        CHECK_EQ_INT(r->cfg.head_dim, 4);
        EXPECT(r, "model.layers.0.self_attn.q_norm.weight", CKS_ROLE_Q_NORM, W, 0, -1);
        EXPECT(r, "model.layers.0.self_attn.k_norm.weight", CKS_ROLE_K_NORM, W, 0, -1);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

static void mixtral(void)
{
    reset();
    add_top();
    for (int l = 0; l < 2; l++) {
        add_llama_layer(l, false, false);
        add(4, 8, "model.layers.%d.block_sparse_moe.gate.weight", l);
        for (int e = 0; e < 4; e++) {
            add(16, 8, "model.layers.%d.block_sparse_moe.experts.%d.w1.weight", l, e);
            add(8, 16, "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", l, e);
            add(16, 8, "model.layers.%d.block_sparse_moe.experts.%d.w3.weight", l, e);
        }
    }
    cks_ckpt *c = build();
    cks_roles *r = map(c, "{\"model_type\":\"mixtral\",\"num_hidden_layers\":2,\"num_local_experts\":4}");
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_STR(r->family, "mixtral");
        CHECK_EQ_INT(r->cfg.n_routed_experts, 4);
        EXPECT(r, "model.layers.1.block_sparse_moe.gate.weight", CKS_ROLE_ROUTER, W, 1, -1);
        EXPECT(r, "model.layers.1.block_sparse_moe.experts.3.w1.weight", CKS_ROLE_EXPERT_GATE, W, 1, 3);
        EXPECT(r, "model.layers.1.block_sparse_moe.experts.3.w3.weight", CKS_ROLE_EXPERT_UP, W, 1, 3);
        EXPECT(r, "model.layers.0.block_sparse_moe.experts.2.w2.weight", CKS_ROLE_EXPERT_DOWN, W, 0, 2);
        CHECK_EQ_INT(cks_roles_layer_experts(r, 1), 4);
        const cks_tensor_role *t = cks_roles_find(r, CKS_ROLE_EXPERT_DOWN, W, 1, 2);
        CHECK(t && strcmp(t->tensor->info->name, "model.layers.1.block_sparse_moe.experts.2.w2.weight") == 0);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

/* DeepSeek-V3 / GLM-4.5 / Solar-Open share the MoE naming; the first builds one layer of it. */
static void add_moe_layer(int l, int experts, bool shared)
{
    add(4, 8, "model.layers.%d.mlp.gate.weight", l);
    add_t(CKS_DTYPE_F32, 4, 0, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
    for (int e = 0; e < experts; e++) {
        add(6, 8, "model.layers.%d.mlp.experts.%d.gate_proj.weight", l, e);
        add(6, 8, "model.layers.%d.mlp.experts.%d.up_proj.weight", l, e);
        add(8, 6, "model.layers.%d.mlp.experts.%d.down_proj.weight", l, e);
    }
    if (shared) {
        add(6, 8, "model.layers.%d.mlp.shared_experts.gate_proj.weight", l);
        add(6, 8, "model.layers.%d.mlp.shared_experts.up_proj.weight", l);
        add(8, 6, "model.layers.%d.mlp.shared_experts.down_proj.weight", l);
    }
}

static void expect_moe_layer(cks_roles *r, int l, int experts)
{
    char n[160];
    snprintf(n, sizeof n, "model.layers.%d.mlp.gate.weight", l);
    EXPECT(r, n, CKS_ROLE_ROUTER, W, l, -1);
    snprintf(n, sizeof n, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
    EXPECT(r, n, CKS_ROLE_ROUTER_BIAS, W, l, -1);
    for (int e = 0; e < experts; e++) {
        snprintf(n, sizeof n, "model.layers.%d.mlp.experts.%d.gate_proj.weight", l, e);
        EXPECT(r, n, CKS_ROLE_EXPERT_GATE, W, l, e);
        snprintf(n, sizeof n, "model.layers.%d.mlp.experts.%d.up_proj.weight", l, e);
        EXPECT(r, n, CKS_ROLE_EXPERT_UP, W, l, e);
        snprintf(n, sizeof n, "model.layers.%d.mlp.experts.%d.down_proj.weight", l, e);
        EXPECT(r, n, CKS_ROLE_EXPERT_DOWN, W, l, e);
    }
    snprintf(n, sizeof n, "model.layers.%d.mlp.shared_experts.gate_proj.weight", l);
    EXPECT(r, n, CKS_ROLE_SHARED_GATE, W, l, -1);
    snprintf(n, sizeof n, "model.layers.%d.mlp.shared_experts.up_proj.weight", l);
    EXPECT(r, n, CKS_ROLE_SHARED_UP, W, l, -1);
    snprintf(n, sizeof n, "model.layers.%d.mlp.shared_experts.down_proj.weight", l);
    EXPECT(r, n, CKS_ROLE_SHARED_DOWN, W, l, -1);
}

/* The MTP block as GLM-4.5 / DeepSeek-V3 store it: a full block plus its own projections. */
static void add_mtp_layer(int l)
{
    add(8, 0, "model.layers.%d.enorm.weight", l);
    add(8, 0, "model.layers.%d.hnorm.weight", l);
    add(8, 16, "model.layers.%d.eh_proj.weight", l);
    add(8, 0, "model.layers.%d.shared_head.norm.weight", l);
    add(32, 8, "model.layers.%d.shared_head.head.weight", l);
    add(32, 8, "model.layers.%d.embed_tokens.weight", l);
    add_llama_layer(l, true, false);
    add_moe_layer(l, 2, true);
}

static void glm4_moe(void)
{
    reset();
    add_top();
    for (int l = 0; l < 3; l++) {
        add_llama_layer(l, true, false);
        if (l == 0)
            add_dense_mlp(l);
        else
            add_moe_layer(l, 4, true);
    }
    add_mtp_layer(3);
    cks_ckpt *c = build();
    static const char cfg[] = "{\"model_type\":\"glm4_moe\",\"num_hidden_layers\":3,\"hidden_size\":8,"
                              "\"num_attention_heads\":2,\"num_key_value_heads\":1,\"head_dim\":4,"
                              "\"n_routed_experts\":4,\"n_shared_experts\":1,\"first_k_dense_replace\":1,"
                              "\"num_nextn_predict_layers\":1,\"moe_intermediate_size\":6,"
                              "\"attention_bias\":true,\"tie_word_embeddings\":false}";
    cks_roles *r = map(c, cfg);
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_STR(r->family, "glm4_moe");
        CHECK_EQ_INT(r->n_layers, 3);
        CHECK_EQ_INT(r->n_mtp_layers, 1);
        CHECK_EQ_INT(r->cfg.first_k_dense_replace, 1);
        CHECK_EQ_INT(r->cfg.moe_intermediate_size, 6);
        expect_top(r);
        for (int l = 0; l < 3; l++)
            expect_llama_layer(r, l, true);
        EXPECT(r, "model.layers.0.mlp.gate_proj.weight", CKS_ROLE_DENSE_GATE, W, 0, -1);
        CHECK(cks_roles_find(r, CKS_ROLE_ROUTER, W, 0, -1) == NULL);
        expect_moe_layer(r, 1, 4);
        expect_moe_layer(r, 2, 4);
        /* every tensor of stored layer 3 is MTP, whatever it would be in a layer */
        size_t mtp = 0;
        for (size_t i = 0; i < r->n; i++) {
            const cks_tensor_role *e = &r->entries[i];
            if (strncmp(e->tensor->info->name, "model.layers.3.", 15) == 0) {
                CHECK_MSG(e->role == CKS_ROLE_MTP && e->layer == 3 && e->expert == -1, "%s",
                          e->tensor->info->name);
                mtp++;
            } else {
                CHECK_MSG(e->role != CKS_ROLE_MTP, "%s", e->tensor->info->name);
            }
        }
        CHECK(mtp > 20);
        CHECK(cks_roles_find(r, CKS_ROLE_ROUTER, W, 3, -1) == NULL);
        CHECK(cks_roles_find(r, CKS_ROLE_ATTN_NORM, W, 3, -1) == NULL);
        CHECK_EQ_INT(cks_roles_layer_experts(r, 2), 4);
        CHECK_EQ_INT(cks_roles_layer_experts(r, 3), 0);
    }
    cks_roles_free(r);

    /* Without config.json the MTP block is recognised by its own tensor names. */
    r = map(c, NULL);
    CHECK(r != NULL);
    if (r) {
        CHECK(r->inferred);
        CHECK(strstr(r->note, "inferred") != NULL);
        CHECK_EQ_INT(r->n_layers, 3);
        CHECK_EQ_INT(r->n_mtp_layers, 1);
        CHECK_EQ_INT(r->cfg.n_routed_experts, 4);
        CHECK_EQ_INT(r->cfg.hidden_size, 8);
        CHECK_EQ_INT(r->cfg.vocab_size, 32);
        EXPECT(r, "model.layers.3.eh_proj.weight", CKS_ROLE_MTP, W, 3, -1);
        EXPECT(r, "model.layers.3.mlp.gate.weight", CKS_ROLE_MTP, W, 3, -1);
        expect_moe_layer(r, 2, 4);
    }
    cks_roles_free(r);

    /* A config that does not announce the block: still not a decoder layer, and said so. */
    r = map(c, "{\"model_type\":\"glm4_moe\",\"num_hidden_layers\":3}");
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_INT(r->n_layers, 3);
        CHECK_EQ_INT(r->n_mtp_layers, 1);
        CHECK(strstr(r->note, "MTP") != NULL);
        EXPECT(r, "model.layers.3.input_layernorm.weight", CKS_ROLE_MTP, W, 3, -1);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

static void deepseek_v3(void)
{
    reset();
    add_top();
    for (int l = 0; l < 2; l++) {
        add(8, 0, "model.layers.%d.input_layernorm.weight", l);
        add(8, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        add(4, 8, "model.layers.%d.self_attn.q_a_proj.weight", l);
        add(4, 0, "model.layers.%d.self_attn.q_a_layernorm.weight", l);
        add(12, 4, "model.layers.%d.self_attn.q_b_proj.weight", l);
        add(6, 8, "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", l);
        add(4, 0, "model.layers.%d.self_attn.kv_a_layernorm.weight", l);
        add(16, 4, "model.layers.%d.self_attn.kv_b_proj.weight", l);
        add(8, 8, "model.layers.%d.self_attn.o_proj.weight", l);
    }
    add_dense_mlp(0);
    add_moe_layer(1, 3, true);
    add_t(CKS_DTYPE_F32, 1, 1, "model.layers.1.mlp.experts.2.down_proj.weight_scale_inv");
    add_mtp_layer(2);
    cks_ckpt *c = build();
    cks_roles *r = map(c, "{\"model_type\":\"deepseek_v3\",\"num_hidden_layers\":2,\"n_routed_experts\":3,"
                          "\"first_k_dense_replace\":1,\"num_nextn_predict_layers\":1,\"q_lora_rank\":4,"
                          "\"head_dim\":null}");
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_STR(r->family, "deepseek_v3");
        CHECK_EQ_INT(r->n_layers, 2);
        CHECK_EQ_INT(r->n_mtp_layers, 1);
        CHECK_EQ_INT(r->cfg.head_dim, -1);
        EXPECT(r, "model.layers.1.self_attn.q_a_proj.weight", CKS_ROLE_Q_A, W, 1, -1);
        EXPECT(r, "model.layers.1.self_attn.q_a_layernorm.weight", CKS_ROLE_Q_A_NORM, W, 1, -1);
        EXPECT(r, "model.layers.1.self_attn.q_b_proj.weight", CKS_ROLE_Q_B, W, 1, -1);
        EXPECT(r, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", CKS_ROLE_KV_A, W, 0, -1);
        EXPECT(r, "model.layers.0.self_attn.kv_a_layernorm.weight", CKS_ROLE_KV_A_NORM, W, 0, -1);
        EXPECT(r, "model.layers.0.self_attn.kv_b_proj.weight", CKS_ROLE_KV_B, W, 0, -1);
        EXPECT(r, "model.layers.0.mlp.down_proj.weight", CKS_ROLE_DENSE_DOWN, W, 0, -1);
        expect_moe_layer(r, 1, 3);
        EXPECT(r, "model.layers.1.mlp.experts.2.down_proj.weight_scale_inv", CKS_ROLE_EXPERT_DOWN,
               CKS_PART_SCALE, 1, 2);
        EXPECT(r, "model.layers.2.shared_head.head.weight", CKS_ROLE_MTP, W, 2, -1);
        EXPECT(r, "model.layers.2.self_attn.q_proj.weight", CKS_ROLE_MTP, W, 2, -1);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

/* Solar-Open-100B: GLM-style MoE names, every layer MoE, no attention biases, no MTP. */
static void solar_open(void)
{
    reset();
    add_top();
    for (int l = 0; l < 3; l++) {
        add_llama_layer(l, false, false);
        add_moe_layer(l, 4, true);
    }
    cks_ckpt *c = build();
    cks_roles *r = map(c, "{\"model_type\":\"solar_open\",\"num_hidden_layers\":3,\"n_routed_experts\":4,"
                          "\"n_shared_experts\":1,\"first_k_dense_replace\":0,\"intermediate_size\":10240}");
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_STR(r->family, "solar_open");
        CHECK_EQ_INT(r->n_layers, 3);
        CHECK_EQ_INT(r->n_mtp_layers, 0);
        for (int l = 0; l < 3; l++) {
            expect_llama_layer(r, l, false);
            expect_moe_layer(r, l, 4);
        }
        CHECK(cks_roles_find(r, CKS_ROLE_ROUTER, W, 0, -1) != NULL);
        CHECK(cks_roles_find(r, CKS_ROLE_DENSE_UP, W, 0, -1) == NULL);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

/* Phi-3.5-MoE: LayerNorm with biases, attention biases, Mixtral-style experts, lm_head bias. */
static void phimoe(void)
{
    reset();
    add(32, 8, "model.embed_tokens.weight");
    add(8, 0, "model.norm.weight");
    add(8, 0, "model.norm.bias");
    add(32, 8, "lm_head.weight");
    add(32, 0, "lm_head.bias");
    for (int l = 0; l < 2; l++) {
        add_llama_layer(l, true, false);
        add(8, 0, "model.layers.%d.input_layernorm.bias", l);
        add(8, 0, "model.layers.%d.post_attention_layernorm.bias", l);
        add(8, 0, "model.layers.%d.self_attn.o_proj.bias", l);
        add(2, 8, "model.layers.%d.block_sparse_moe.gate.weight", l);
        for (int e = 0; e < 2; e++) {
            add(16, 8, "model.layers.%d.block_sparse_moe.experts.%d.w1.weight", l, e);
            add(8, 16, "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", l, e);
            add(16, 8, "model.layers.%d.block_sparse_moe.experts.%d.w3.weight", l, e);
        }
    }
    cks_ckpt *c = build();
    cks_roles *r = map(c, "{\"model_type\":\"phimoe\",\"num_hidden_layers\":2,\"num_local_experts\":2}");
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_STR(r->family, "phimoe");
        expect_llama_layer(r, 1, true);
        EXPECT(r, "model.layers.1.input_layernorm.bias", CKS_ROLE_ATTN_NORM, B, 1, -1);
        EXPECT(r, "model.layers.1.post_attention_layernorm.bias", CKS_ROLE_FFN_NORM, B, 1, -1);
        EXPECT(r, "model.layers.0.self_attn.o_proj.bias", CKS_ROLE_O, B, 0, -1);
        EXPECT(r, "model.layers.0.block_sparse_moe.gate.weight", CKS_ROLE_ROUTER, W, 0, -1);
        EXPECT(r, "model.layers.0.block_sparse_moe.experts.1.w2.weight", CKS_ROLE_EXPERT_DOWN, W, 0, 1);
        EXPECT(r, "model.norm.bias", CKS_ROLE_FINAL_NORM, B, -1, -1);
        EXPECT(r, "lm_head.bias", CKS_ROLE_LM_HEAD, B, -1, -1);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

/* Phi-3 (dense): fused qkv_proj and gate_up_proj, split by the config's head counts. */
static void phi3_fused(void)
{
    reset();
    add_top();
    add(8, 0, "model.layers.0.input_layernorm.weight");
    add(16, 8, "model.layers.0.self_attn.qkv_proj.weight"); /* q 8 + k 4 + v 4 */
    add(8, 8, "model.layers.0.self_attn.o_proj.weight");
    add(32, 8, "model.layers.0.mlp.gate_up_proj.weight");
    add(8, 16, "model.layers.0.mlp.down_proj.weight");
    cks_ckpt *c = build();
    for (int with_config = 1; with_config >= 0; with_config--) {
        cks_roles *r = map(c, with_config ? "{\"model_type\":\"phi3\",\"num_hidden_layers\":1,\"hidden_size\":8,"
                                            "\"num_attention_heads\":2,\"num_key_value_heads\":1}"
                                          : NULL);
        CHECK(r != NULL);
        if (!r)
            continue;
        CHECK_EQ_STR(r->family, "phi3");
        const cks_tensor_role *e = entry(r, "model.layers.0.self_attn.qkv_proj.weight");
        CHECK(e && e->role == CKS_ROLE_QKV && e->fused && e->split.n_slices == 3 && e->split.axis == 0);
        if (e && e->split.n_slices == 3) {
            CHECK(e->split.slices[0].role == CKS_ROLE_Q && e->split.slices[0].begin == 0 &&
                  e->split.slices[0].count == 8);
            CHECK(e->split.slices[1].role == CKS_ROLE_K && e->split.slices[1].begin == 8 &&
                  e->split.slices[1].count == 4);
            CHECK(e->split.slices[2].role == CKS_ROLE_V && e->split.slices[2].begin == 12 &&
                  e->split.slices[2].count == 4);
        }
        const cks_fused_slice *sl = NULL;
        const cks_tensor_role *t = cks_roles_locate(r, CKS_ROLE_K, W, 0, -1, &sl);
        CHECK(t == e && sl && sl->begin == 8 && sl->count == 4);
        t = cks_roles_locate(r, CKS_ROLE_DENSE_UP, W, 0, -1, &sl);
        CHECK(t && t->role == CKS_ROLE_DENSE_GATE_UP && sl && sl->role == CKS_ROLE_DENSE_UP && sl->begin == 16 &&
              sl->count == 16);
        t = cks_roles_locate(r, CKS_ROLE_DENSE_GATE, W, 0, -1, &sl);
        CHECK(t && sl && sl->begin == 0 && sl->count == 16);
        CHECK(cks_roles_find(r, CKS_ROLE_Q, W, 0, -1) == NULL);
        CHECK(cks_roles_locate(r, CKS_ROLE_O, W, 1, -1, &sl) == NULL && sl == NULL);
        cks_roles_free(r);
    }
    cks_ckpt_free(c);
}

/* GPT-2 as openai-community/gpt2 stores it: no prefix, Conv1D [in, out], a mask buffer. */
static void gpt2(void)
{
    reset();
    add(32, 8, "wte.weight");
    add(16, 8, "wpe.weight");
    add(8, 0, "ln_f.weight");
    add(8, 0, "ln_f.bias");
    for (int l = 0; l < 2; l++) {
        add(8, 0, "h.%d.ln_1.weight", l);
        add(8, 0, "h.%d.ln_1.bias", l);
        add(8, 24, "h.%d.attn.c_attn.weight", l);
        add(24, 0, "h.%d.attn.c_attn.bias", l);
        add(8, 8, "h.%d.attn.c_proj.weight", l);
        add(8, 0, "h.%d.attn.c_proj.bias", l);
        add(16, 16, "h.%d.attn.bias", l); /* the causal-mask buffer, not an attention bias */
        add(8, 0, "h.%d.ln_2.weight", l);
        add(8, 0, "h.%d.ln_2.bias", l);
        add(8, 32, "h.%d.mlp.c_fc.weight", l);
        add(32, 0, "h.%d.mlp.c_fc.bias", l);
        add(32, 8, "h.%d.mlp.c_proj.weight", l);
        add(8, 0, "h.%d.mlp.c_proj.bias", l);
    }
    cks_ckpt *c = build();
    cks_roles *r = map(c, "{\"model_type\":\"gpt2\",\"n_layer\":2,\"n_embd\":8,\"n_head\":2,\"vocab_size\":32}");
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_STR(r->family, "gpt2");
        CHECK_EQ_INT(r->n_layers, 2);
        CHECK_EQ_INT(r->cfg.hidden_size, 8);
        CHECK_EQ_INT(r->cfg.num_attention_heads, 2);
        EXPECT(r, "wte.weight", CKS_ROLE_EMBED, W, -1, -1);
        EXPECT(r, "wpe.weight", CKS_ROLE_POS_EMBED, W, -1, -1);
        EXPECT(r, "ln_f.bias", CKS_ROLE_FINAL_NORM, B, -1, -1);
        EXPECT(r, "h.1.ln_1.weight", CKS_ROLE_ATTN_NORM, W, 1, -1);
        EXPECT(r, "h.1.ln_2.bias", CKS_ROLE_FFN_NORM, B, 1, -1);
        EXPECT(r, "h.1.attn.c_attn.weight", CKS_ROLE_QKV, W, 1, -1);
        EXPECT(r, "h.1.attn.c_attn.bias", CKS_ROLE_QKV, B, 1, -1);
        EXPECT(r, "h.1.attn.c_proj.weight", CKS_ROLE_O, W, 1, -1);
        EXPECT(r, "h.1.attn.bias", CKS_ROLE_OTHER, B, 1, -1);
        EXPECT(r, "h.0.mlp.c_fc.weight", CKS_ROLE_DENSE_UP, W, 0, -1);
        EXPECT(r, "h.0.mlp.c_proj.weight", CKS_ROLE_DENSE_DOWN, W, 0, -1);
        const cks_tensor_role *e = entry(r, "h.0.attn.c_attn.weight");
        CHECK(e && e->transposed && e->fused && e->split.axis == 1 && e->split.n_slices == 3);
        if (e && e->split.n_slices == 3)
            CHECK(e->split.slices[2].role == CKS_ROLE_V && e->split.slices[2].begin == 16 &&
                  e->split.slices[2].count == 8);
        e = entry(r, "h.0.attn.c_attn.bias");
        CHECK(e && !e->transposed && e->split.axis == 0 && e->split.n_slices == 3);
        e = entry(r, "h.0.mlp.c_proj.weight");
        CHECK(e && e->transposed && !e->fused);
        const cks_fused_slice *sl = NULL;
        const cks_tensor_role *t = cks_roles_locate(r, CKS_ROLE_K, B, 1, -1, &sl);
        CHECK(t && strcmp(t->tensor->info->name, "h.1.attn.c_attn.bias") == 0 && sl && sl->begin == 8);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

/* BERT: encoder.layer.N, post-LN, old TF gamma/beta names for some LayerNorms, task heads. */
static void bert(void)
{
    reset();
    add(32, 8, "bert.embeddings.word_embeddings.weight");
    add(16, 8, "bert.embeddings.position_embeddings.weight");
    add(2, 8, "bert.embeddings.token_type_embeddings.weight");
    add(8, 0, "bert.embeddings.LayerNorm.gamma");
    add(8, 0, "bert.embeddings.LayerNorm.beta");
    for (int l = 0; l < 2; l++) {
        add(8, 8, "bert.encoder.layer.%d.attention.self.query.weight", l);
        add(8, 0, "bert.encoder.layer.%d.attention.self.query.bias", l);
        add(8, 8, "bert.encoder.layer.%d.attention.self.key.weight", l);
        add(8, 8, "bert.encoder.layer.%d.attention.self.value.weight", l);
        add(8, 8, "bert.encoder.layer.%d.attention.output.dense.weight", l);
        add(8, 0, "bert.encoder.layer.%d.attention.output.LayerNorm.weight", l);
        add(8, 0, "bert.encoder.layer.%d.attention.output.LayerNorm.bias", l);
        add(32, 8, "bert.encoder.layer.%d.intermediate.dense.weight", l);
        add(8, 32, "bert.encoder.layer.%d.output.dense.weight", l);
        add(8, 0, "bert.encoder.layer.%d.output.LayerNorm.weight", l);
    }
    add(8, 8, "bert.pooler.dense.weight");
    add(8, 8, "cls.predictions.transform.dense.weight");
    add(3, 8, "classifier.weight");
    cks_ckpt *c = build();
    cks_roles *r = map(c, "{\"model_type\":\"bert\",\"num_hidden_layers\":2,\"hidden_size\":8}");
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_STR(r->family, "bert");
        EXPECT(r, "bert.embeddings.word_embeddings.weight", CKS_ROLE_EMBED, W, -1, -1);
        EXPECT(r, "bert.embeddings.position_embeddings.weight", CKS_ROLE_POS_EMBED, W, -1, -1);
        EXPECT(r, "bert.embeddings.token_type_embeddings.weight", CKS_ROLE_TYPE_EMBED, W, -1, -1);
        EXPECT(r, "bert.embeddings.LayerNorm.gamma", CKS_ROLE_EMBED_NORM, W, -1, -1);
        EXPECT(r, "bert.embeddings.LayerNorm.beta", CKS_ROLE_EMBED_NORM, B, -1, -1);
        EXPECT(r, "bert.encoder.layer.1.attention.self.query.weight", CKS_ROLE_Q, W, 1, -1);
        EXPECT(r, "bert.encoder.layer.1.attention.self.query.bias", CKS_ROLE_Q, B, 1, -1);
        EXPECT(r, "bert.encoder.layer.1.attention.self.key.weight", CKS_ROLE_K, W, 1, -1);
        EXPECT(r, "bert.encoder.layer.1.attention.self.value.weight", CKS_ROLE_V, W, 1, -1);
        EXPECT(r, "bert.encoder.layer.1.attention.output.dense.weight", CKS_ROLE_O, W, 1, -1);
        EXPECT(r, "bert.encoder.layer.0.attention.output.LayerNorm.bias", CKS_ROLE_ATTN_NORM, B, 0, -1);
        EXPECT(r, "bert.encoder.layer.0.intermediate.dense.weight", CKS_ROLE_DENSE_UP, W, 0, -1);
        EXPECT(r, "bert.encoder.layer.0.output.dense.weight", CKS_ROLE_DENSE_DOWN, W, 0, -1);
        EXPECT(r, "bert.encoder.layer.0.output.LayerNorm.weight", CKS_ROLE_FFN_NORM, W, 0, -1);
        EXPECT(r, "bert.pooler.dense.weight", CKS_ROLE_HEAD, W, -1, -1);
        EXPECT(r, "cls.predictions.transform.dense.weight", CKS_ROLE_HEAD, W, -1, -1);
        EXPECT(r, "classifier.weight", CKS_ROLE_HEAD, W, -1, -1);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

/* An architecture outside the table: everything is "other", layers still recognised. */
static void unknown_arch(void)
{
    reset();
    add(32, 8, "backbone.embeddings.weight");
    add(8, 0, "backbone.norm_f.weight");
    add(16, 8, "backbone.layers.0.mixer.in_proj.weight");
    add(8, 0, "backbone.layers.0.mixer.A_log");
    add(8, 0, "backbone.layers.1.norm.weight");
    cks_ckpt *c = build();
    cks_roles *r = map(c, "{\"model_type\":\"mamba\",\"num_hidden_layers\":2}");
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_STR(r->family, "unknown");
        for (size_t i = 0; i < r->n; i++)
            CHECK_MSG(r->entries[i].role == CKS_ROLE_OTHER, "%s is %s", r->entries[i].tensor->info->name,
                      cks_role_name(r->entries[i].role));
        EXPECT(r, "backbone.layers.0.mixer.in_proj.weight", CKS_ROLE_OTHER, W, 0, -1);
        EXPECT(r, "backbone.layers.1.norm.weight", CKS_ROLE_OTHER, W, 1, -1);
    }
    cks_roles_free(r);
    /* no config and unknown names */
    r = map(c, NULL);
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_STR(r->family, "unknown");
        CHECK(r->inferred);
        CHECK_EQ_INT(r->n_layers, 2);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

/* Names that look like layers but are not decoder layers of this config are "other". */
static void layers_beyond_config(void)
{
    reset();
    add_top();
    add_llama_layer(0, false, false);
    add_llama_layer(1, false, false);
    cks_ckpt *c = build();
    cks_roles *r = map(c, "{\"model_type\":\"llama\",\"num_hidden_layers\":1}");
    CHECK(r != NULL);
    if (r) {
        EXPECT(r, "model.layers.1.self_attn.q_proj.weight", CKS_ROLE_OTHER, W, 1, -1);
        CHECK(strstr(r->note, "beyond") != NULL);
        expect_llama_layer(r, 0, false);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

static void bad_configs(void)
{
    static const char *const bad[] = {
        "{\"num_hidden_layers\":-3}",  "{\"num_hidden_layers\":2.5}", "{\"num_hidden_layers\":\"2\"}",
        "{\"hidden_size\":1e300}",     "[1,2]",                       "{\"n_routed_experts\":true}",
        "{\"num_hidden_layers\":2",    "",                            "{\"num_hidden_layers\":1000001}",
    };
    reset();
    add_top();
    cks_ckpt *c = build();
    for (size_t i = 0; c && i < sizeof bad / sizeof bad[0]; i++) {
        cks_roles *r = (cks_roles *)1;
        cks_diag diag = {{0}};
        cks_err err = cks_roles_build(c, bad[i], strlen(bad[i]), &r, &diag);
        CHECK_MSG(err == CKS_ERR_INVALID_ARG && r == NULL && diag.text[0], "%s -> %s", bad[i], cks_strerror(err));
    }
    /* case-sensitive keys: "Num_Hidden_Layers" is not the depth */
    cks_arch_config cfg;
    static const char odd[] = "{\"Num_Hidden_Layers\":5,\"model_type\":\"llama\"}";
    CHECK_EQ_INT(cks_arch_config_parse(odd, sizeof odd - 1, &cfg, NULL), CKS_OK);
    CHECK_EQ_INT(cfg.num_hidden_layers, -1);
    /* nested text_config of multimodal wrappers */
    static const char nested[] = "{\"model_type\":\"llava\",\"text_config\":{\"num_hidden_layers\":7,"
                                 "\"hidden_size\":64,\"model_type\":\"llama\"}}";
    CHECK_EQ_INT(cks_arch_config_parse(nested, sizeof nested - 1, &cfg, NULL), CKS_OK);
    CHECK_EQ_INT(cfg.num_hidden_layers, 7);
    CHECK_EQ_INT(cfg.hidden_size, 64);
    CHECK_EQ_STR(cfg.model_type, "llava");
    cks_roles_free(NULL);
    CHECK_EQ_STR(cks_role_name(CKS_ROLE_ROUTER_BIAS), "router_bias");
    CHECK_EQ_STR(cks_role_name((cks_role)999), "other");
    cks_ckpt_free(c);
}

/* Gemma-2 sandwich norms: with a separate pre-FFN norm, post_attention_layernorm is a post-norm. */
static void gemma2_sandwich(void)
{
    reset();
    add_top();
    add_llama_layer(0, false, false);
    add(8, 0, "model.layers.0.pre_feedforward_layernorm.weight");
    add(8, 0, "model.layers.0.post_feedforward_layernorm.weight");
    cks_ckpt *c = build();
    cks_roles *r = map(c, "{\"model_type\":\"gemma2\",\"num_hidden_layers\":1}");
    CHECK(r != NULL);
    if (r) {
        EXPECT(r, "model.layers.0.post_attention_layernorm.weight", CKS_ROLE_POST_ATTN_NORM, W, 0, -1);
        EXPECT(r, "model.layers.0.pre_feedforward_layernorm.weight", CKS_ROLE_FFN_NORM, W, 0, -1);
        EXPECT(r, "model.layers.0.post_feedforward_layernorm.weight", CKS_ROLE_POST_FFN_NORM, W, 0, -1);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

/* Meta's original Llama naming (layers.N.attention.wq, feed_forward.w1, output). */
static void meta_llama(void)
{
    reset();
    add(32, 8, "tok_embeddings.weight");
    add(8, 0, "norm.weight");
    add(32, 8, "output.weight");
    add(8, 0, "layers.0.attention_norm.weight");
    add(8, 0, "layers.0.ffn_norm.weight");
    add(8, 8, "layers.0.attention.wq.weight");
    add(4, 8, "layers.0.attention.wk.weight");
    add(4, 8, "layers.0.attention.wv.weight");
    add(8, 8, "layers.0.attention.wo.weight");
    add(16, 8, "layers.0.feed_forward.w1.weight");
    add(8, 16, "layers.0.feed_forward.w2.weight");
    add(16, 8, "layers.0.feed_forward.w3.weight");
    cks_ckpt *c = build();
    cks_roles *r = map(c, NULL);
    CHECK(r != NULL);
    if (r) {
        CHECK_EQ_INT(r->n_layers, 1);
        EXPECT(r, "tok_embeddings.weight", CKS_ROLE_EMBED, W, -1, -1);
        EXPECT(r, "norm.weight", CKS_ROLE_FINAL_NORM, W, -1, -1);
        EXPECT(r, "output.weight", CKS_ROLE_LM_HEAD, W, -1, -1);
        EXPECT(r, "layers.0.attention_norm.weight", CKS_ROLE_ATTN_NORM, W, 0, -1);
        EXPECT(r, "layers.0.ffn_norm.weight", CKS_ROLE_FFN_NORM, W, 0, -1);
        EXPECT(r, "layers.0.attention.wk.weight", CKS_ROLE_K, W, 0, -1);
        EXPECT(r, "layers.0.attention.wo.weight", CKS_ROLE_O, W, 0, -1);
        EXPECT(r, "layers.0.feed_forward.w1.weight", CKS_ROLE_DENSE_GATE, W, 0, -1);
        EXPECT(r, "layers.0.feed_forward.w3.weight", CKS_ROLE_DENSE_UP, W, 0, -1);
        EXPECT(r, "layers.0.feed_forward.w2.weight", CKS_ROLE_DENSE_DOWN, W, 0, -1);
        CHECK_EQ_INT(r->cfg.tie_word_embeddings, 0);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

/*
 * The synthetic families (tests/tools/gen_family.py) opened from disk: sharded checkpoints
 * with config.json, and the re-uploads under other names (Meta's Llama names; a
 * "language_model." prefix for the GLM style). Every tensor must get a role. Generated here
 * when /usr/bin/python3 with numpy is available; CKS_FAMILY_DIR points at existing output.
 */
static void family_checkpoints(void)
{
    static const char *const tags[] = {"base", "finetune", "permuted", "independent", "layers_inserted",
                                       "layers_removed", "reshard", "base_cls", "independent_cls"};
    static const char *const styles[] = {"llama", "glm"};
    const char *dir = getenv("CKS_FAMILY_DIR"), *root = getenv("CKS_ROOT");
    char tmpl[] = "/tmp/cks-roles-XXXXXX", cmd[8192], path[4096];
    bool made = false;
    if (!dir) {
        if (access("/usr/bin/python3", X_OK) != 0 || system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") != 0)
            SKIP("/usr/bin/python3 with numpy not available to run gen_family.py");
        if (!mkdtemp(tmpl))
            SKIP("no temporary directory");
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/tools/gen_family.py %s >/dev/null", root ? root : ".",
                 tmpl);
        made = true;
        dir = tmpl;
        CHECK_MSG(system(cmd) == 0, "%s failed", cmd);
    }
    for (size_t s = 0; s < 2; s++) {
        for (size_t k = 0; k < sizeof tags / sizeof tags[0]; k++) {
            cks_ckpt *c = NULL;
            cks_roles *r = NULL;
            cks_diag diag = {{0}};
            bool glm = s == 1;
            int depth = (glm ? 4 : 6) + (strcmp(tags[k], "layers_inserted") == 0) -
                        (strcmp(tags[k], "layers_removed") == 0);
            snprintf(path, sizeof path, "%s/%s/%s", dir, styles[s], tags[k]);
            CHECK_MSG(cks_ckpt_open_local(path, &c, &diag) == CKS_OK, "%s: %s", path, diag.text);
            CHECK_MSG(c && cks_roles_load_dir(c, path, &r, &diag) == CKS_OK, "%s: %s", path, diag.text);
            if (r) {
                size_t other = 0, heads = 0, mtp = 0;
                CHECK_MSG(!r->inferred && r->n_layers == depth && r->n_mtp_layers == (glm ? 1 : 0),
                          "%s: %d layers + %d MTP", path, r->n_layers, r->n_mtp_layers);
                CHECK_EQ_STR(r->family, glm ? "glm4_moe" : "llama");
                for (size_t i = 0; i < r->n; i++) {
                    other += r->entries[i].role == CKS_ROLE_OTHER;
                    heads += r->entries[i].role == CKS_ROLE_HEAD;
                    mtp += r->entries[i].role == CKS_ROLE_MTP;
                }
                CHECK_MSG(other == 0, "%s: %zu tensors without a role", path, other);
                CHECK_EQ_INT(heads, strstr(tags[k], "_cls") ? 1 : 0);
                CHECK(glm ? mtp > 10 : mtp == 0);
                for (int l = 0; l < depth; l++) {
                    CHECK_MSG(cks_roles_find(r, CKS_ROLE_ATTN_NORM, W, l, -1) &&
                                  cks_roles_find(r, CKS_ROLE_FFN_NORM, W, l, -1) &&
                                  cks_roles_find(r, CKS_ROLE_K, W, l, -1),
                              "%s layer %d", path, l);
                    if (glm && l >= 1)
                        CHECK_MSG(cks_roles_find(r, CKS_ROLE_ROUTER_BIAS, W, l, -1) &&
                                      cks_roles_find(r, CKS_ROLE_EXPERT_DOWN, W, l, 7) &&
                                      cks_roles_find(r, CKS_ROLE_SHARED_UP, W, l, -1) &&
                                      cks_roles_layer_experts(r, l) == 8,
                                  "%s MoE layer %d", path, l);
                }
                CHECK(cks_roles_find(r, CKS_ROLE_EMBED, W, -1, -1) && cks_roles_find(r, CKS_ROLE_LM_HEAD, W, -1, -1) &&
                      cks_roles_find(r, CKS_ROLE_FINAL_NORM, W, -1, -1));
                CHECK(cks_roles_find(r, CKS_ROLE_ROUTER, W, 0, -1) == NULL);
                CHECK(cks_roles_find(r, CKS_ROLE_ATTN_NORM, W, depth, -1) == NULL);
            }
            cks_roles_free(r);
            cks_ckpt_free(c);
        }
    }
    if (made) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
        CHECK(system(cmd) == 0);
    }
}

/* Real LoRA adapters from other people's tools (../shared/realdata), when present. */
static cks_roles *map_file(const char *dir, const char *rel, cks_ckpt **c)
{
    char path[4096];
    cks_roles *r = NULL;
    cks_diag diag = {{0}};
    *c = NULL;
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    CHECK_MSG(cks_ckpt_open_local(path, c, &diag) == CKS_OK, "%s: %s", path, diag.text);
    if (*c)
        CHECK_MSG(cks_roles_build(*c, NULL, 0, &r, &diag) == CKS_OK, "%s: %s", path, diag.text);
    if (r) {
        size_t other = 0;
        for (size_t i = 0; i < r->n; i++)
            other += r->entries[i].role == CKS_ROLE_OTHER;
        CHECK_MSG(other == 0, "%s: %zu tensors without a role", rel, other);
        CHECK(r->inferred);
    }
    return r;
}

static void realdata_lora(void)
{
    const char *dir = getenv("CKS_REALDATA");
    char probe[4096];
    cks_ckpt *c = NULL;
    cks_roles *r;
    const cks_tensor_role *e;
    if (!dir)
        dir = "../shared/realdata";
    snprintf(probe, sizeof probe, "%s/SOURCES.md", dir);
    if (access(probe, R_OK) != 0)
        SKIP("%s absent", dir);

    /* PEFT on GPT-2: lora_B of the fused c_attn splits into q, k, v rows; lora_A does not split */
    r = map_file(dir, "gpt2-lora-seqcls/anirudh-ak_adapter_model.safetensors", &c);
    if (r) {
        CHECK_EQ_STR(r->family, "gpt2");
        EXPECT(r, "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", CKS_ROLE_QKV, CKS_PART_LORA_A, 0, -1);
        EXPECT(r, "base_model.model.transformer.h.11.attn.c_attn.lora_B.weight", CKS_ROLE_QKV, CKS_PART_LORA_B, 11,
               -1);
        EXPECT(r, "base_model.model.score.weight", CKS_ROLE_HEAD, W, -1, -1);
        e = entry(r, "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight");
        CHECK(e && !e->transposed && e->fused && e->split.axis == 0 && e->split.n_slices == 3 &&
              e->split.slices[1].begin == 768 && e->split.slices[1].count == 768);
        e = entry(r, "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight");
        CHECK(e && e->fused && e->split.n_slices == 0);
        CHECK_EQ_INT(r->n_layers, 12);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);

    r = map_file(dir, "distilbert-lora-seqcls/tashu014_adapter_model.safetensors", &c);
    if (r) {
        EXPECT(r, "base_model.model.distilbert.transformer.layer.0.attention.q_lin.lora_A.weight", CKS_ROLE_Q,
               CKS_PART_LORA_A, 0, -1);
        EXPECT(r, "base_model.model.distilbert.transformer.layer.1.attention.v_lin.lora_B.weight", CKS_ROLE_V,
               CKS_PART_LORA_B, 1, -1);
        EXPECT(r, "base_model.model.classifier.bias", CKS_ROLE_HEAD, B, -1, -1);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);

    r = map_file(dir, "roberta-lora-subro608/checkpoint-500_adapter_model.safetensors", &c);
    if (r) {
        EXPECT(r, "base_model.model.roberta.encoder.layer.10.attention.self.query.lora_B.weight", CKS_ROLE_Q,
               CKS_PART_LORA_B, 10, -1);
        EXPECT(r, "base_model.model.classifier.dense.weight", CKS_ROLE_HEAD, W, -1, -1);
        EXPECT(r, "base_model.model.classifier.out_proj.bias", CKS_ROLE_HEAD, B, -1, -1);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);

    /* mlx-lm stores the factors transposed and without ".weight" */
    r = map_file(dir, "mlx-lora-gemma2b-arjun254/0000100_adapters.safetensors", &c);
    if (r) {
        EXPECT(r, "model.layers.14.self_attn.q_proj.lora_a", CKS_ROLE_Q, CKS_PART_LORA_A, 14, -1);
        EXPECT(r, "model.layers.15.self_attn.v_proj.lora_b", CKS_ROLE_V, CKS_PART_LORA_B, 15, -1);
        e = entry(r, "model.layers.14.self_attn.q_proj.lora_a");
        CHECK(e && e->transposed);
    }
    cks_roles_free(r);
    cks_ckpt_free(c);
}

TEST_MAIN(T(llama), T(mistral), T(qwen2_and_qwen3), T(mixtral), T(glm4_moe), T(deepseek_v3), T(solar_open),
          T(phimoe), T(phi3_fused), T(gpt2), T(bert), T(unknown_arch), T(layers_beyond_config), T(bad_configs),
          T(gemma2_sandwich), T(meta_llama),
          T(family_checkpoints), T(realdata_lora))
