# libFuzzer build + run for the safetensors parser.
#
#   make -f tests/fuzz.mk BUILD=build/fuzz             build, then fuzz 60 s
#   make -f tests/fuzz.mk BUILD=build/fuzz FUZZ_TIME=600
#   make -f tests/fuzz.mk BUILD=build/fuzz minimize    fold new finds back
#
# The run works on a scratch copy of the corpus so the committed directory
# only changes when someone decides to merge.

BUILD     ?= build/fuzz
FUZZ_CC   ?= clang
FUZZ_TIME ?= 60
CORPUS    := tests/corpus/safetensors
SCRATCH   := $(BUILD)/corpus
FUZZER    := $(BUILD)/fuzz_safetensors
FUZZ_SRC  := tests/fuzz_safetensors.c models/safetensors.c common/status.c
FUZZ_FLAGS = -max_total_time=$(FUZZ_TIME) -max_len=4096 -dict=$(BUILD)/safetensors.dict \
	     -artifact_prefix=$(BUILD)/ -print_final_stats=1

.PHONY: run build minimize
run: $(FUZZER) $(BUILD)/safetensors.dict
	@mkdir -p $(SCRATCH)
	cp -n $(CORPUS)/* $(SCRATCH)/ 2>/dev/null || true
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 $(FUZZER) $(FUZZ_FLAGS) $(SCRATCH)
	@echo "fuzzing done; crashes (if any) are $(BUILD)/crash-*."
	@echo "to fold new inputs into $(CORPUS) (minimized, coverage-preserving):"
	@echo "    make -f tests/fuzz.mk BUILD=$(BUILD) minimize"

build: $(FUZZER)

$(FUZZER): $(FUZZ_SRC) models/safetensors.h common/status.h tests/fuzz.mk
	@mkdir -p $(BUILD)
	$(FUZZ_CC) -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	    -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -O1 -o $@ $(FUZZ_SRC) -ljansson

# Tokens of the format, so mutations reach past the JSON syntax quickly.
$(BUILD)/safetensors.dict: tests/fuzz.mk
	@mkdir -p $(BUILD)
	@printf '%s\n' '"\"dtype\""' '"\"shape\""' '"\"data_offsets\""' \
	    '"\"__metadata__\""' '"\"F32\""' '"\"F16\""' '"\"BF16\""' '"\"F64\""' \
	    '"\"I64\""' '"\"I32\""' '"\"I16\""' '"\"I8\""' '"\"U8\""' '"\"BOOL\""' \
	    '"\\u0000"' '"9223372036854775807"' '"4294967296"' '"-1"' '"1.5"' \
	    '"[0,0]"' '"[]"' '"{}"' > $@

# Rebuilds the committed corpus: the hand-made seeds (named files, kept
# as-is) plus, from the committed finds and the scratch run, only inputs that
# add coverage (libFuzzer -merge=1 names those by SHA-1).
minimize: $(FUZZER)
	rm -rf $(BUILD)/merged && mkdir -p $(BUILD)/merged $(SCRATCH)
	find $(CORPUS) -regextype posix-extended -type f ! -regex '.*/[0-9a-f]{40}' -exec cp {} $(BUILD)/merged/ \;
	$(FUZZER) -merge=1 -max_len=4096 $(BUILD)/merged $(CORPUS) $(SCRATCH)
	rm -f $(CORPUS)/* && cp $(BUILD)/merged/* $(CORPUS)/
	@echo "$(CORPUS): $$(ls $(CORPUS) | wc -l) files, $$(du -sh $(CORPUS) | cut -f1)"
