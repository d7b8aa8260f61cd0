//! Certificates for unit tests, made with rcgen at test time (no key material in the tree).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyIdMethod, KeyPair, SerialNumber,
};

/// The key id [`TestCa::new`] is usually given.
pub(crate) const CA_KEY_ID: [u8; 20] = [0xab; 20];

/// A CA whose subject key identifier is chosen, and certificates it signs.
pub(crate) struct TestCa {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A self-signed CA with subject key identifier `key_id` and serial 7f01.
    pub(crate) fn new(key_id: &[u8]) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_identifier_method = KeyIdMethod::PreSpecified(key_id.to_vec());
        params.serial_number = Some(SerialNumber::from_slice(&[0x7f, 0x01]));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { ca }
    }

    /// The CA certificate, DER.
    pub(crate) fn der(&self) -> Vec<u8> {
        self.ca.der().to_vec()
    }

    /// The CA certificate, PEM.
    pub(crate) fn pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf with `serial`, naming this CA in its authority key identifier, DER.
    pub(crate) fn leaf(&self, serial: &[u8]) -> Vec<u8> {
        self.certificate(serial).der().to_vec()
    }

    /// [`TestCa::leaf`] as PEM, followed by this CA (a chain as Mintgate returns it).
    pub(crate) fn chain_pem(&self, serial: &[u8]) -> String {
        format!("{}{}", self.certificate(serial).pem(), self.pem())
    }

    fn certificate(&self, serial: &[u8]) -> rcgen::Certificate {
        let mut params = CertificateParams::new(vec!["workload.example".to_owned()]).unwrap();
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(serial));
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, &self.ca).unwrap()
    }
}
