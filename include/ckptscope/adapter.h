/*
 * ckptscope/adapter.h — LoRA adapters as modules, whatever the key style that wrote them.
 *
 * A LoRA adapter stores, per adapted module, two factors whose product is the weight update
 * the adapter applies: dW = up · down (out x in), with down [r, in] (PEFT lora_A, kohya and
 * diffusers lora_down / lora.down) and up [out, r] (lora_B, lora_up, lora.up). mlx-lm stores
 * the transposes (lora_a [in, r], lora_b [r, out]). Convolutional factors ([r, in, kh, kw],
 * [out, r, 1, 1]) are flattened to matrices.
 *
 * Why modules and not tensors: the factors are defined only up to an invertible r x r change
 * of basis (up M, M^-1 down give the same update), and the update is what training changed.
 * So a comparison of two adapters compares the updates module by module, and the same adapter
 * saved under another key style must land on the same module keys:
 *
 *   PEFT            base_model.model.<path>.lora_A[.<name>].weight       (and lora_B)
 *   mlx-lm          <path>.lora_a / <path>.lora_b                         (transposed)
 *   diffusers (new) unet.<path>.lora.down.weight, or PEFT-style lora_A    (and up / lora_B)
 *   diffusers (old) <path>.processor.to_q_lora.down.weight                (attn processors)
 *   kohya           lora_unet_<path with _>.lora_down.weight, .lora_up.weight, .alpha
 *
 * The canonical key is the component (te, te2, or none for a UNet or a language model: diffusers'
 * old style saves the UNet without a prefix) and the module path, lower-cased,
 * with the separators '.' and '_' dropped (kohya turns dots into underscores, so only a
 * separator-free spelling is common to all styles); a separator between two digits becomes
 * '#' so that "1.10" and "11.0" stay apart. diffusers' old "to_out_lora" names the module the
 * new style calls "to_out.0": both become "toout". Keys that two tensors of one checkpoint
 * would share are dropped (ambiguous), never guessed.
 *
 * Library only: never prints, never exits.
 */
#ifndef CKPTSCOPE_ADAPTER_H
#define CKPTSCOPE_ADAPTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckptscope/checkpoint.h"
#include "ckptscope/error.h"

#define CKS_ADAPTER_KEY_MAX 256

typedef enum cks_adapter_factor {
    CKS_ADAPTER_NONE = 0, /* not a LoRA tensor */
    CKS_ADAPTER_DOWN,     /* [r, in]: lora_A, lora_down, lora.down (random initialisation) */
    CKS_ADAPTER_UP,       /* [out, r]: lora_B, lora_up, lora.up (zero initialisation) */
    CKS_ADAPTER_ALPHA     /* kohya's per-module scale */
} cks_adapter_factor;

/*
 * The canonical module key of a tensor name and which factor it holds. Returns
 * CKS_ADAPTER_NONE (key empty) for a name that is not a LoRA factor; *transposed is true for
 * mlx-lm's [in, r] / [r, out] layout.
 */
cks_adapter_factor cks_adapter_key(const char *name, char *key, size_t key_size, bool *transposed);

typedef struct cks_adapter_module {
    char key[CKS_ADAPTER_KEY_MAX];
    const cks_ckpt_tensor *down, *up;
    bool down_transposed, up_transposed;
    size_t rank, out, in;     /* dW is out x in */
} cks_adapter_module;

typedef struct cks_adapter {
    size_t n;
    cks_adapter_module *modules; /* sorted by key */
    size_t n_factor_tensors;     /* tensors that are LoRA factors (paired or not) */
    size_t n_ambiguous;          /* keys dropped because two tensors claimed them */
    size_t n_unpaired;           /* a down without its up, or shapes that do not chain */
} cks_adapter;

/* Every complete module of a checkpoint (n == 0 when it is not an adapter). */
cks_err cks_adapter_scan(const cks_ckpt *ckpt, cks_adapter **out, cks_diag *diag);
const cks_adapter_module *cks_adapter_find(const cks_adapter *a, const char *key);
void cks_adapter_free(cks_adapter *a);

#endif
