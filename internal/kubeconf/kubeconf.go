// Package kubeconf writes the kubeconfigs that the lab and the tests hand to
// the processes of a node: an agent's (a ServiceAccount token) and a
// kubelet's (a client certificate for system:node:<name>, signed by the
// control plane's CA). Both trust the CA of the admin kubeconfig and name
// the server as the node sees it.
package kubeconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// CA returns the certificate authority (PEM) the admin kubeconfig trusts.
func CA(adminKubeconfig string) ([]byte, error) {
	admin, err := clientcmd.LoadFromFile(adminKubeconfig)
	if err != nil {
		return nil, err
	}
	for _, c := range admin.Clusters {
		if len(c.CertificateAuthorityData) > 0 {
			return c.CertificateAuthorityData, nil
		}
		if c.CertificateAuthority != "" {
			return os.ReadFile(c.CertificateAuthority)
		}
	}
	return nil, fmt.Errorf("%s names no certificate authority", adminKubeconfig)
}

// WriteToken writes to path a kubeconfig that reaches server with a bearer
// token, trusting the CA of the admin kubeconfig: how an agent in a node
// namespace reaches the API through a forwarder.
func WriteToken(adminKubeconfig, token, server, path string) error {
	ca, err := CA(adminKubeconfig)
	if err != nil {
		return err
	}
	return write(path, server, ca, &clientcmdapi.AuthInfo{Token: token})
}

// WriteClient writes to path a kubeconfig that reaches server with a client
// certificate for user (and groups) signed by the CA whose certificate and
// key are caCert and caKey (PEM files; the key EC or PKCS#8), as kubeadm
// writes a kubelet's: WriteClient(..., "system:node:"+name,
// []string{"system:nodes"}, ...). The certificate is valid for a year.
func WriteClient(caCert, caKey, server, user string, groups []string, path string) error {
	ca, signer, err := loadCA(caCert, caKey)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: user, Organization: groups},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, signer)
	if err != nil {
		return fmt.Errorf("signing a certificate for %s: %w", user, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})
	return write(path, server, caPEM, &clientcmdapi.AuthInfo{
		ClientCertificateData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		ClientKeyData:         pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	})
}

func loadCA(certPath, keyPath string) (*x509.Certificate, any, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("%s: no PEM certificate", certPath)
	}
	ca, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	k, _ := pem.Decode(keyPEM)
	if k == nil {
		return nil, nil, fmt.Errorf("%s: no PEM key", keyPath)
	}
	var signer any
	switch k.Type {
	case "EC PRIVATE KEY":
		signer, err = x509.ParseECPrivateKey(k.Bytes)
	case "PRIVATE KEY":
		signer, err = x509.ParsePKCS8PrivateKey(k.Bytes)
	default:
		err = fmt.Errorf("a %q block, not an EC or PKCS#8 private key", k.Type)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if !ca.IsCA {
		return nil, nil, errors.New(certPath + " is not a CA certificate")
	}
	return ca, signer, nil
}

func write(path, server string, ca []byte, auth *clientcmdapi.AuthInfo) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["api"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos["user"] = auth
	cfg.Contexts["default"] = &clientcmdapi.Context{Cluster: "api", AuthInfo: "user"}
	cfg.CurrentContext = "default"
	return clientcmd.WriteToFile(*cfg, path)
}
