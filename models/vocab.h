/* vocab: the CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz, openai/CLIP,
 * MIT licence), embedded in the binary at build time so an installed
 * daemon needs no data files. */
#ifndef DF_VOCAB_H
#define DF_VOCAB_H

extern const unsigned char clip_vocab_gz[];
extern const unsigned char clip_vocab_gz_end[];

#define CLIP_VOCAB_GZ_SIZE ((size_t)(clip_vocab_gz_end - clip_vocab_gz))

#endif
