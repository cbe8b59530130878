"""What dataset plugins share: the device data path, long-tail and stratified subsets, tabular readers,
the CIFAR-10-C corruptions. Submodules are imported when used."""
