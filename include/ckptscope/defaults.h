/*
 * include/ckptscope/defaults.h — the defaults that several layers must agree on, in one place:
 * compare's budget and seed (what 0 means in cks_compare_opts), which fingerprint also records
 * because a fingerprint is built with compare's sampling, and the CLI's help and progress show.
 */
#ifndef CKS_DEFAULTS_H
#define CKS_DEFAULTS_H

/* Bytes read per model by compare when budget_bytes is 0 (DESIGN: the budget planner). */
#define CKS_DEFAULT_BUDGET_BYTES (384ull << 20)
/* The smallest --budget the CLI takes (compare and fingerprint alike): below one 4 KiB block
 * no tensor sample fits. */
#define CKS_MIN_BUDGET_BYTES 4096ull
/* The seed of every sample and permutation when seed is 0 (the date the method was fixed). */
#define CKS_DEFAULT_SEED 20260128ull

#endif
