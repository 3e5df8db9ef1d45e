/*
 * LoRA adapter modules: one canonical key per module whatever the key style (names written
 * here by hand from each tool's documented layout: PEFT, mlx-lm, diffusers old and new,
 * kohya), factors and orientation, and a checkpoint scan that pairs factors, checks that
 * their shapes chain and drops ambiguous keys instead of guessing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "ckptscope/adapter.h"
#include "ckptscope/checkpoint.h"
#include "support/stwriter.h"

static cks_adapter_factor key_of(const char *name, char *key, bool *transposed)
{
    return cks_adapter_key(name, key, CKS_ADAPTER_KEY_MAX, transposed);
}

/* The same UNet attention module written by four tools lands on one key. */
static void unet_styles_share_one_key(void)
{
    static const struct {
        const char *name;
        cks_adapter_factor factor;
    } styles[] = {
        {"down_blocks.0.attentions.1.transformer_blocks.0.attn1.processor.to_q_lora.down.weight", CKS_ADAPTER_DOWN},
        {"unet.down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.lora.up.weight", CKS_ADAPTER_UP},
        {"unet.down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.lora_A.weight", CKS_ADAPTER_DOWN},
        {"lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q.lora_up.weight", CKS_ADAPTER_UP},
        {"lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q.alpha", CKS_ADAPTER_ALPHA},
    };
    char first[CKS_ADAPTER_KEY_MAX], key[CKS_ADAPTER_KEY_MAX];
    bool transposed;
    CHECK(key_of(styles[0].name, first, &transposed) == styles[0].factor);
    CHECK(!transposed);
    CHECK_EQ_STR(first, ":downblocks0attentions1transformerblocks0attn1toq");
    for (size_t i = 1; i < sizeof styles / sizeof styles[0]; i++) {
        CHECK_MSG(key_of(styles[i].name, key, &transposed) == styles[i].factor, "%s", styles[i].name);
        CHECK_MSG(strcmp(key, first) == 0, "%s -> %s, not %s", styles[i].name, key, first);
    }
    /* diffusers' old to_out_lora is the new style's to_out.0 (and kohya's to_out_0) */
    CHECK(key_of("mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight", first,
                 &transposed) == CKS_ADAPTER_UP);
    CHECK(key_of("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0.lora.up.weight", key, &transposed) ==
          CKS_ADAPTER_UP);
    CHECK_EQ_STR(key, first);
    CHECK(key_of("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight", key,
                 &transposed) == CKS_ADAPTER_UP);
    CHECK_EQ_STR(key, first);
    /* the text encoder is its own component */
    CHECK(key_of("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", key, &transposed) ==
          CKS_ADAPTER_DOWN);
    CHECK_EQ_STR(key, "te:textmodelencoderlayers0selfattnqproj");
    CHECK(key_of("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", first, &transposed) ==
          CKS_ADAPTER_DOWN);
    CHECK_EQ_STR(first, key);
}

static void language_model_styles(void)
{
    char a[CKS_ADAPTER_KEY_MAX], b[CKS_ADAPTER_KEY_MAX];
    bool ta, tb;
    /* PEFT (with and without an adapter name) and mlx-lm (transposed) */
    CHECK(key_of("base_model.model.model.layers.14.self_attn.q_proj.lora_A.weight", a, &ta) == CKS_ADAPTER_DOWN);
    CHECK(key_of("model.layers.14.self_attn.q_proj.lora_a", b, &tb) == CKS_ADAPTER_DOWN);
    CHECK_EQ_STR(a, b);
    CHECK(!ta && tb);
    CHECK(key_of("base_model.model.model.layers.14.self_attn.q_proj.lora_B.default.weight", a, &ta) == CKS_ADAPTER_UP);
    CHECK(key_of("model.layers.14.self_attn.q_proj.lora_b", b, &tb) == CKS_ADAPTER_UP);
    CHECK_EQ_STR(a, b);
    /* digit groups stay apart: layers 1.10 and 11.0 are different modules */
    CHECK(key_of("blocks.1.10.attn.lora_A.weight", a, &ta) == CKS_ADAPTER_DOWN);
    CHECK(key_of("blocks.11.0.attn.lora_A.weight", b, &tb) == CKS_ADAPTER_DOWN);
    CHECK(strcmp(a, b) != 0);
    /* not LoRA at all */
    CHECK(key_of("model.layers.0.self_attn.q_proj.weight", a, &ta) == CKS_ADAPTER_NONE);
    CHECK(key_of("lora_A.weight", a, &ta) == CKS_ADAPTER_NONE); /* no module */
    CHECK(a[0] == 0);
}

static char *write_file(const char *stem, st_writer *w)
{
    static char path[256];
    st_buf buf = {0};
    FILE *f;
    snprintf(path, sizeof path, "/tmp/cks-adapter-%d-%s.safetensors", (int)getpid(), stem);
    st_writer_finish(w, &buf);
    f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f) {
        fwrite(buf.data, 1, buf.len, f);
        fclose(f);
    }
    st_buf_free(&buf);
    return path;
}

/* A scan pairs factors by key, takes mlx's transposes, and drops what it cannot pair. */
static void scan_pairs_factors(void)
{
    st_writer *w = st_writer_new();
    uint64_t down[2] = {4, 48}, up[2] = {32, 4}, mlx_a[2] = {48, 4}, mlx_b[2] = {4, 32}, bad_up[2] = {32, 5};
    cks_ckpt *ck = NULL;
    cks_adapter *ad = NULL;
    cks_diag d;
    const cks_adapter_module *m;
    st_writer_add(w, "base_model.model.layers.0.q.lora_A.weight", CKS_DTYPE_F32, down, 2, NULL);
    st_writer_add(w, "base_model.model.layers.0.q.lora_B.weight", CKS_DTYPE_F32, up, 2, NULL);
    st_writer_add(w, "layers.1.q.lora_a", CKS_DTYPE_F32, mlx_a, 2, NULL);
    st_writer_add(w, "layers.1.q.lora_b", CKS_DTYPE_F32, mlx_b, 2, NULL);
    /* the ranks do not chain: unpaired */
    st_writer_add(w, "layers.2.q.lora_A.weight", CKS_DTYPE_F32, down, 2, NULL);
    st_writer_add(w, "layers.2.q.lora_B.weight", CKS_DTYPE_F32, bad_up, 2, NULL);
    /* a down without its up */
    st_writer_add(w, "layers.3.q.lora_A.weight", CKS_DTYPE_F32, down, 2, NULL);
    /* two tensors claim one key: PEFT's and kohya's spelling of the same module */
    st_writer_add(w, "layers.4.q.lora_A.weight", CKS_DTYPE_F32, down, 2, NULL);
    st_writer_add(w, "layers_4_q.lora_down.weight", CKS_DTYPE_F32, down, 2, NULL);
    st_writer_add(w, "layers.4.q.lora_B.weight", CKS_DTYPE_F32, up, 2, NULL);
    st_writer_add(w, "head.weight", CKS_DTYPE_F32, up, 2, NULL);
    const char *path = write_file("scan", w);
    st_writer_free(w);
    CHECK(cks_ckpt_open_local(path, &ck, &d) == CKS_OK);
    if (!ck)
        return;
    CHECK(cks_adapter_scan(ck, &ad, &d) == CKS_OK);
    if (ad) {
        CHECK_EQ_INT(ad->n, 2);
        CHECK_EQ_INT(ad->n_factor_tensors, 10);
        CHECK_EQ_INT(ad->n_ambiguous, 1);
        CHECK_EQ_INT(ad->n_unpaired, 2);
        m = cks_adapter_find(ad, ":layers0q");
        CHECK(m && m->rank == 4 && m->out == 32 && m->in == 48 && !m->down_transposed && !m->up_transposed);
        m = cks_adapter_find(ad, ":layers1q");
        CHECK(m && m->rank == 4 && m->out == 32 && m->in == 48 && m->down_transposed && m->up_transposed);
        CHECK(cks_adapter_find(ad, ":layers2q") == NULL);
    }
    cks_adapter_free(ad);
    cks_ckpt_free(ck);
    unlink(path);
}

TEST_MAIN(T(unet_styles_share_one_key), T(language_model_styles), T(scan_pairs_factors))
