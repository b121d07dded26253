// Kernel registry of the emulated driver: scripts/build_emu.sh generates one file per
// kernels/*.cu that includes it and lists its `extern "C"` kernels with a typed
// trampoline unpacking the driver's `void **kernelParams`.
#pragma once
#include <cstddef>
#include <type_traits>
#include <utility>

struct EmuKernel {
    const char *name;
    void (*invoke)(void **params);
    int nparams;
};

template <class... A, std::size_t... I>
inline void emu_call(void (*f)(A...), void **p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A> *>(p[I])...);
}
template <class... A> constexpr int emu_nparams(void (*)(A...)) { return (int)sizeof...(A); }
template <auto F> void emu_invoke(void **p) {
    emu_call(F, p, std::make_index_sequence<emu_nparams(F)>{});
}

extern "C" void cyb_emu_register(const EmuKernel *table, int n, const char *file);

struct EmuRegistrar {
    EmuRegistrar(const EmuKernel *t, int n, const char *file) { cyb_emu_register(t, n, file); }
};

#define CYB_EMU_KERNEL(name) EmuKernel{#name, &emu_invoke<&name>, emu_nparams(&name)}
