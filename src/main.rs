fn main() {
    print!("{}", kube_stepup::api::crds_yaml().expect("CRDs serialize"));
}
