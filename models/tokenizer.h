/* tokenizer: the CLIP byte-level BPE tokenizer, id-for-id what Stable
 * Diffusion's transformers CLIPTokenizer (slow path, with ftfy) produces.
 *
 * Text goes through the same steps as in Python: the literal strings
 * "<|startoftext|>" / "<|endoftext|>" are split out as special tokens;
 * each piece between them is cleaned like ftfy 6.x fix_text (HTML entities
 * unless the line has '<', C1 controls as Windows-1252, Latin ligatures,
 * full/half-width forms, curly quotes, line breaks, terminal escapes,
 * control characters, NFC), whitespace runs become one space, the ends are
 * stripped and the text lowercased like str.lower(); CLIP's regex splits it
 * into words, numbers and punctuation runs, each is BPE-merged.
 *
 * Not reproduced: ftfy's mojibake repair (fix_encoding), a heuristic that
 * re-decodes text that looks like UTF-8 read as Latin-1 etc.; ordinary
 * prompts never trigger it. ftfy's repeat-until-stable loop is capped at 16
 * passes, which only matters for escapes nested deeper ("&amp;amp;...").
 * Character classes follow the tables in models/data/unicode_data.inc
 * (regex module and unicodedata versions named there); they can differ
 * from another Python's only on characters assigned in recent Unicode.
 *
 * Invalid UTF-8 does not fail: each maximal ill-formed subsequence becomes
 * U+FFFD, as Python's bytes.decode("utf-8", "replace") does. */
#ifndef DF_TOKENIZER_H
#define DF_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"

#define TOK_MAX_INPUT (256u << 10) /* prompt bytes accepted by tok_encode */

struct tokenizer;

/* Builds the tokenizer from the gzip bytes of bpe_simple_vocab_16e6.txt.gz
 * (inflated in memory; `vocab_gz` may be freed afterwards). DF_EFORMAT for
 * a file that is not gzip, has fewer than 48894 merges, or has a merge
 * using a token only a later merge makes. */
df_status tok_create(const void *vocab_gz, size_t len, struct tokenizer **out);
df_status tok_create_from_file(const char *path, struct tokenizer **out);
void tok_destroy(struct tokenizer *t);

int32_t tok_bos(const struct tokenizer *t); /* 49406 for CLIP */
int32_t tok_eos(const struct tokenizer *t); /* 49407 for CLIP */

/* ids[0..max_len): BOS + tokens + EOS, truncated to max_len (EOS kept last),
 * padded with pad_id (49407 for SD1.x, 0 for CLIP-G). max_len >= 2.
 * *n_tokens (may be NULL) gets the untruncated count including BOS and EOS.
 * Thread-safe: `t` is read-only after creation. */
df_status tok_encode(const struct tokenizer *t, const char *utf8, int max_len, int32_t pad_id,
                     int32_t *ids, int *n_tokens);

/* The id of vocabulary token `token`, spelled as the vocabulary spells it:
 * a special ("<|endoftext|>") or bytes_to_unicode text, "</w>" ending a
 * word ("!", "a</w>", "photograph</w>"). DF_EINVAL naming it when the
 * vocabulary has no such token. */
df_status tok_token_id(const struct tokenizer *t, const char *token, int32_t *id);

/* The id a diffusers tokenizer folder (`dir`: "<model>/tokenizer_2") pads
 * with, as transformers resolves it: pad_token from special_tokens_map.json,
 * else tokenizer_config.json (a string or an AddedToken dict's "content"),
 * else CLIPTokenizer's default "<|endoftext|>"; its id from dir/vocab.json,
 * else tokenizer_config.json's added_tokens_decoder, else (no vocab.json)
 * t's vocabulary. SD1.x pads with 49407, SDXL's tokenizer_2 and SD2.x with
 * "!" = 0. An unknown token, a null pad_token or an id outside the CLIP
 * vocabulary is an error naming the file and the token. */
df_status tok_pad_id_from_folder(const struct tokenizer *t, const char *dir, int32_t *pad_id);

#endif
