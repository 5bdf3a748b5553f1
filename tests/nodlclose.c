/* LD_PRELOAD'ed by `make asan` only: the Vulkan loader unloads the driver
 * and layers at vkDestroyInstance, after which LeakSanitizer reports their
 * leaks as "<unknown module>" and tests/lsan.supp cannot name them. Keeping
 * every library loaded keeps their names; nothing else changes. */
int dlclose(void *handle);

int dlclose(void *handle) {
    (void)handle;
    return 0;
}
